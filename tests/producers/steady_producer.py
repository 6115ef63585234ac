#!/usr/bin/env python3
"""A product system sending a day of traffic at a steady rate, for the soak test: a fixed
population of customers whose touchpoints are spread evenly over `--hours` of event time
and produced in event-time order at `--rate` records per second, so a day is compressed
into minutes. Producers retry now and then (the same record again, 1 to 30 event-minutes
later) and a tenth of touchpoints gets an NPS answer within two minutes. Nothing of
cxstream's code is used: what it must count is computed here from the README's rules
(each event id and response id counts once) and written as JSON.

    steady_producer.py --brokers H:P --touchpoints T --answers A --customers N \
        --touchpoint-count M --hours 24 --rate R --seed S --summary FILE
"""
import argparse
import heapq
import json
import pathlib
import random
import time

import yaml
from confluent_kafka import Producer

from fastavro_producer import ROOT, encode, load

MINUTE_MS = 60_000
HOUR_MS = 3_600_000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--touchpoints", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--touchpoint-count", type=int, default=40_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="records per second")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--summary", required=True)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    journey = yaml.safe_load((ROOT / "schemas/journeys/retail.yaml").read_text())
    touchpoints = [(t["name"], t["channels"]) for t in journey["touchpoints"]]
    tp_schema, tp_header = load("touchpoint.avsc")
    ans_schema, ans_header = load("survey_answer.avsc")
    segment = [rng.choice(journey["segments"]) for _ in range(args.customers)]

    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20,
                         "enable.idempotence": True, "queue.buffering.max.messages": 200_000})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    span = int(args.hours * HOUR_MS)
    # Records waiting for their send time: (send time, order, topic, key, value).
    later, order = [], 0
    by_touchpoint, by_hour = {}, {}
    nps = {"promoters": 0, "passives": 0, "detractors": 0}
    sent = {"touchpoints": 0, "answers": 0, "resent": 0, "records": 0}
    began = time.monotonic()

    def send(topic, key, value):
        # Paced: record k leaves no earlier than k / rate seconds after the start.
        ahead = began + sent["records"] / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent["records"] += 1
        producer.poll(0)

    def queue(at, topic, key, value):
        nonlocal order
        order += 1
        heapq.heappush(later, (at, order, topic, key, value))

    for i in range(args.touchpoint_count):
        t = start + i * span // args.touchpoint_count
        while later and later[0][0] <= t:
            _, _, topic, key, value = heapq.heappop(later)
            send(topic, key, value)
        c = rng.randrange(args.customers)
        customer = f"soak-{c}"
        name, channels = rng.choice(touchpoints)
        ev = {"event_id": f"{customer}-e{i}", "customer_id": customer, "anonymous_id": None,
              "event_time": t, "touchpoint": name, "channel": rng.choice(channels),
              "stage": None, "segment": segment[c], "outcome": None,
              "attributes": {"producer": "steady"}}
        value = encode(tp_schema, tp_header, ev)
        send(args.touchpoints, customer, value)
        sent["touchpoints"] += 1
        by_touchpoint[name] = by_touchpoint.get(name, 0) + 1
        hour = str((t - start) // HOUR_MS)
        by_hour[hour] = by_hour.get(hour, 0) + 1
        if rng.random() < 0.02:
            queue(t + rng.randrange(MINUTE_MS, 30 * MINUTE_MS), args.touchpoints, customer, value)
            sent["resent"] += 1
        if rng.random() < 0.1:
            score = rng.randint(0, 10)
            at = t + rng.randrange(1_000, 120_000)
            ans = {"response_id": f"{customer}-r{i}", "customer_id": customer,
                   "answer_time": at, "metric": "NPS", "score": score,
                   "touchpoint_event_id": ev["event_id"], "touchpoint": name, "channel": None,
                   "comment": None, "attributes": {}}
            queue(at, args.answers, customer, encode(ans_schema, ans_header, ans))
            sent["answers"] += 1
            bucket = "promoters" if score >= 9 else "passives" if score >= 7 else "detractors"
            nps[bucket] += 1
    while later:
        _, _, topic, key, value = heapq.heappop(later)
        send(topic, key, value)
    producer.flush(60)
    if failures:
        raise SystemExit(f"{len(failures)} deliveries failed, first: {failures[0]}")
    summary = dict(sent, by_touchpoint=by_touchpoint, by_hour=by_hour, nps=nps,
                   seconds=round(time.monotonic() - began, 1))
    pathlib.Path(args.summary).write_text(json.dumps(summary, indent=1, sort_keys=True))
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
