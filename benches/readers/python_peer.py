#!/usr/bin/env python3
"""The reader a user would write instead of cxstream: confluent-kafka and fastavro, per-minute
touchpoint counts and NPS buckets in dicts, each event id and response id counted once. It
reads the given topics from their start to the end they had when it started, then prints
what it counted. No journeys, no state kept anywhere: the floor of what such a peer costs.

    python_peer.py BROKERS TOUCHPOINTS_TOPIC ANSWERS_TOPIC
"""
import io
import json
import pathlib
import sys

import fastavro
from confluent_kafka import Consumer, TopicPartition

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = 10  # Avro single-object encoding: C3 01 + 8-byte schema fingerprint


def millis(t):
    # fastavro reads timestamp-millis as an aware datetime.
    return t if isinstance(t, int) else round(t.timestamp() * 1000)


def schema(name):
    return fastavro.parse_schema(json.loads((ROOT / "schemas/avro" / name).read_text()))


def main():
    brokers, tp_topic, ans_topic = sys.argv[1:4]
    readers = {tp_topic: schema("touchpoint.avsc"), ans_topic: schema("survey_answer.avsc")}
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "python-peer-bench",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    ends, assignment = {}, []
    for topic in readers:
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[(topic, p)] = high
                assignment.append(TopicPartition(topic, p, low))
    consumer.assign(assignment)
    seen_events, seen_answers = set(), set()
    touchpoints, nps = {}, {}
    records = 0
    while ends:
        for m in consumer.consume(1000, 0.1):
            if m.error():
                continue
            records += 1
            key = (m.topic(), m.partition())
            if key in ends and m.offset() + 1 >= ends[key]:
                del ends[key]
            value = m.value()
            try:
                r = fastavro.schemaless_reader(io.BytesIO(value[HEADER:]), readers[m.topic()])
            except Exception:
                continue  # a bad record: cxstream dead-letters it
            if m.topic() == tp_topic:
                if r["event_id"] in seen_events:
                    continue
                seen_events.add(r["event_id"])
                cell = (millis(r["event_time"]) // 60_000, r["touchpoint"], r["channel"], r["segment"])
                touchpoints[cell] = touchpoints.get(cell, 0) + 1
            elif r["metric"] == "NPS" and r["response_id"] not in seen_answers:
                seen_answers.add(r["response_id"])
                bucket = 2 if r["score"] >= 9 else 1 if r["score"] >= 7 else 0
                cell = (millis(r["answer_time"]) // 60_000, r["touchpoint"])
                counts = nps.setdefault(cell, [0, 0, 0])
                counts[bucket] += 1
    consumer.close()
    print(f"python peer: {records} records, {sum(touchpoints.values())} touchpoints in "
          f"{len(touchpoints)} cells, {sum(map(sum, nps.values()))} NPS answers")


if __name__ == "__main__":
    main()
