#!/usr/bin/env python3
"""Event -> committed latency, as a product system would see it: touchpoints produced at a
steady rate (dated now, so event time moves as in production), and ClickHouse's commit log
watched every 20 ms. A record's latency runs from its produce() call to the first time a
committed batch of its partition covers its offset (`ingest_batches.touchpoints_next_offset`
past it), so it includes the producer's batching, the broker, the journey service's flush
interval and the commit. Nothing of cxstream's code is used. Prints one JSON line.

    latency.py --brokers H:P --topic T --clickhouse URL --database DB --journey retail \
        --rate R --seconds S --customers N
"""
import argparse
import bisect
import json
import pathlib
import random
import sys
import threading
import time
import urllib.request

from confluent_kafka import Producer

# The test producers' Avro framing (fastavro, from the project's .avsc files).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests/producers"))
from fastavro_producer import encode, load  # noqa: E402

WATCH_EVERY_S = 0.02


def committed_ends(url, database, journey):
    """Per partition, the offset after the last touchpoint a committed batch holds."""
    query = (f"SELECT source_partition, max(touchpoints_next_offset) FROM {database}.ingest_batches "
             f"WHERE journey = '{journey}' GROUP BY source_partition FORMAT TabSeparated")
    with urllib.request.urlopen(url, data=query.encode(), timeout=5) as r:
        rows = r.read().decode().split("\n")
    return {int(p): int(n) for p, n in (row.split("\t") for row in rows if row)}


def watch(args, seen, stop):
    """Appends (time, partition, committed end) whenever a partition's end moves."""
    last = {}
    while not stop.is_set():
        try:
            ends = committed_ends(args.clickhouse, args.database, args.journey)
        except OSError:
            ends = {}
        now = time.monotonic()
        for p, end in ends.items():
            if end > last.get(p, -1):
                last[p] = end
                seen.setdefault(p, []).append((end, now))
        time.sleep(WATCH_EVERY_S)


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--clickhouse", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("--journey", default="retail")
    ap.add_argument("--rate", type=float, default=4000.0, help="records per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    schema, header = load("touchpoint.avsc")
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5,
                         "enable.idempotence": True, "queue.buffering.max.messages": 500_000})
    sent = []  # (partition, offset, produce time)
    failures = []

    def delivered(at):
        def report(err, msg):
            if err is not None:
                failures.append(str(err))
            else:
                sent.append((msg.partition(), msg.offset(), at))
        return report

    seen, stop = {}, threading.Event()
    watcher = threading.Thread(target=watch, args=(args, seen, stop), daemon=True)
    watcher.start()
    total = int(args.rate * args.seconds)
    began = time.monotonic()
    for i in range(total):
        ahead = began + i / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        customer = f"lat-{rng.randrange(args.customers)}"
        value = encode(schema, header, {
            "event_id": f"{customer}-{i}", "customer_id": customer, "anonymous_id": None,
            "event_time": int(time.time() * 1000), "touchpoint": "product_view",
            "channel": "web", "stage": None, "segment": None, "outcome": None,
            "attributes": {}})
        at = time.monotonic()
        while True:
            try:
                producer.produce(args.topic, key=customer, value=value, on_delivery=delivered(at))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    if failures:
        raise SystemExit(f"{len(failures)} deliveries failed, first: {failures[0]}")
    ends = {}
    for p, o, _ in sent:
        ends[p] = max(ends.get(p, 0), o + 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(seen.get(p) and seen[p][-1][0] >= end for p, end in ends.items()):
            break
        time.sleep(0.1)
    stop.set()
    watcher.join()
    latencies, missing = [], 0
    for p, o, at in sent:
        marks = seen.get(p, [])
        i = bisect.bisect_right([end for end, _ in marks], o)
        if i == len(marks):
            missing += 1
            continue
        latencies.append(1000 * (marks[i][1] - at))
    latencies.sort()
    if not latencies:
        raise SystemExit("no record was seen committed")
    print(json.dumps({
        "records": len(sent), "not_committed_within_120s": missing,
        "rate": args.rate, "seconds": round(time.monotonic() - began, 1),
        "p50_ms": round(percentile(latencies, 0.50)), "p90_ms": round(percentile(latencies, 0.90)),
        "p99_ms": round(percentile(latencies, 0.99)), "max_ms": round(latencies[-1]),
    }))


if __name__ == "__main__":
    main()
