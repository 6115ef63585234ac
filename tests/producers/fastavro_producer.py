#!/usr/bin/env python3
"""A product system written in Python: touchpoints and survey answers encoded with fastavro
and produced with confluent-kafka, keyed by customer id. Nothing of cxstream's code is used:
what it expects is computed here from the README's rules and written as JSON for the test to
compare.

Framing (--framing): `single-object` is Avro single-object encoding as the specification
defines it (fingerprints computed by fastavro from the project's .avsc files); `confluent`
is the Confluent wire format (00 + 4-byte big-endian schema id + datum) with the shop's own
version 2 of the schemas (tests/producers/schemas/, ids --touchpoint-schema-id and
--answer-schema-id), as Confluent's serializers write it; `mixed` alternates the two.

    fastavro_producer.py --brokers H:P --touchpoints T --answers A --customers N \
        --seed S --summary FILE [--framing mixed --touchpoint-schema-id 21 --answer-schema-id 22]
"""
import argparse
import io
import json
import pathlib
import random
import struct

import fastavro
import fastavro.schema
import yaml
from confluent_kafka import Producer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name):
    schema = json.loads((ROOT / "schemas/avro" / name).read_text())
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro prints the CRC-64-AVRO fingerprint as the little-endian bytes of the header.
    header = b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))
    return fastavro.parse_schema(schema), header


def load_confluent(name, schema_id):
    """The shop's own writer schema, framed as Confluent's serializers frame it."""
    schema = json.loads((ROOT / "tests/producers/schemas" / name).read_text())
    return fastavro.parse_schema(schema), b"\x00" + struct.pack(">I", schema_id)


def encode(schema, header, record):
    buf = io.BytesIO()
    buf.write(header)
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--touchpoints", required=True)
    ap.add_argument("--answers", required=True)
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--framing", choices=["single-object", "confluent", "mixed"], default="single-object")
    ap.add_argument("--touchpoint-schema-id", type=int, default=21)
    ap.add_argument("--answer-schema-id", type=int, default=22)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    journey = yaml.safe_load((ROOT / "schemas/journeys/retail.yaml").read_text())
    touchpoints = [(t["name"], t["channels"]) for t in journey["touchpoints"]]
    single = {"tp": load("touchpoint.avsc"), "ans": load("survey_answer.avsc")}
    confluent = {"tp": load_confluent("touchpoint_v2.avsc", args.touchpoint_schema_id),
                 "ans": load_confluent("survey_answer_v2.avsc", args.answer_schema_id)}
    sent_framed = {"single-object": 0, "confluent": 0}

    def framed(kind, record):
        if args.framing == "mixed":
            framing = "confluent" if rng.random() < 0.5 else "single-object"
        else:
            framing = args.framing
        sent_framed[framing] += 1
        schema, header = (confluent if framing == "confluent" else single)[kind]
        if framing == "confluent":
            # The shop's own fields, which cxstream does not know and must skip.
            record = dict(record, device=rng.choice([None, "pixel-8", "iphone-15"]),
                          app_version="4.2.0", survey_id="post-purchase")
        return encode(schema, header, record)

    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20,
                         "enable.idempotence": True})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    by_touchpoint, nps = {}, {"promoters": 0, "passives": 0, "detractors": 0}
    sent_tp, sent_ans, resent = 0, 0, []
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for c in range(args.customers):
        customer = f"py-{c}"
        t = start + rng.randrange(0, 6 * 3_600_000)
        for i in range(rng.randint(1, 5)):
            name, channels = rng.choice(touchpoints)
            t += rng.randrange(1_000, 600_000)
            ev = {"event_id": f"{customer}-e{i}", "customer_id": customer, "anonymous_id": None,
                  "event_time": t, "touchpoint": name, "channel": rng.choice(channels),
                  "stage": None, "segment": rng.choice(journey["segments"]), "outcome": None,
                  "attributes": {"producer": "python"}}
            value = framed("tp", ev)
            producer.produce(args.touchpoints, key=customer, value=value, on_delivery=delivered)
            sent_tp += 1
            by_touchpoint[name] = by_touchpoint.get(name, 0) + 1
            if rng.random() < 0.1:
                resent.append((args.touchpoints, customer, value))  # a producer retry, later
            if rng.random() < 0.4:
                score = rng.randint(0, 10)
                ans = {"response_id": f"{customer}-r{i}", "customer_id": customer,
                       "answer_time": t + rng.randrange(1_000, 120_000), "metric": "NPS",
                       "score": score, "touchpoint_event_id": ev["event_id"],
                       "touchpoint": name, "channel": None, "comment": None, "attributes": {}}
                value = framed("ans", ans)
                producer.produce(args.answers, key=customer, value=value, on_delivery=delivered)
                sent_ans += 1
                bucket = "promoters" if score >= 9 else "passives" if score >= 7 else "detractors"
                nps[bucket] += 1
        producer.poll(0)
    # Re-deliveries of the same events: by the rules, each event id counts once.
    for topic, key, value in resent:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    producer.flush(60)
    if failures:
        raise SystemExit(f"{len(failures)} deliveries failed, first: {failures[0]}")
    summary = {"touchpoints": sent_tp, "answers": sent_ans, "resent": len(resent),
               "by_touchpoint": by_touchpoint, "nps": nps, "framing": sent_framed}
    pathlib.Path(args.summary).write_text(json.dumps(summary, indent=1, sort_keys=True))
    print(json.dumps({k: summary[k] for k in ("touchpoints", "answers", "resent")}))


if __name__ == "__main__":
    main()
