#!/usr/bin/env bash
# Scale-out: the same input records read by 1, 2 and 3 `cxstream journey` instances in one
# consumer group (each count its own group and ClickHouse database; one set of input
# topics). Prints, per count, the wall time from start until ClickHouse has every input
# record committed, the throughput, the instances' CPU per record and their peak RSS.
#   CUSTOMERS (default 200000), DAYS (1), PARTITIONS (6: 1, 2 and 3 divide it),
#   INSTANCES ("1 2 3"). Uses the local stack (deploy/local/up.sh), one machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream
bin="$root/target/release/cxstream"
CX_CXSTREAM_BIN="$bin" deploy/local/up.sh >/dev/null
work="$(mktemp -d)"
broker="127.0.0.1:$CX_KAFKA_PORT"
clickhouse="http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/"
run="scaling$(date +%s)"
partitions="${PARTITIONS:-6}"
config() { # name -> config file reading $run's input topics
  cat >"$work/$1.yaml" <<YAML
topics: {touchpoints: $run.touchpoints, survey_responses: $run.answers, dlq: $1.dlq, aggregates: $1.aggregates, alerts: $1.alerts, identities: $1.identities, alerter_members: $1.members, erasures: $1.erasures, partitions: $partitions}
clickhouse: {database: $1}
journey: {group_id: $1}
http: {listen: "127.0.0.1:0"}
log: {level: warn}
YAML
  "$bin" -c "$work/$1.yaml" topics >/dev/null
  "$bin" -c "$work/$1.yaml" migrate >/dev/null
}
config "$run"
"$bin" -c "$work/$run.yaml" simulate --customers "${CUSTOMERS:-200000}" \
  --days "${DAYS:-1}" --ground-truth "$work/truth.csv" 2>&1 | tail -1
# Every input record, as the broker counts them (bad ones included: they commit too).
expect=$(python3 - "$broker" "$run.touchpoints" "$run.answers" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "scaling-count"})
total = 0
for topic in sys.argv[2:]:
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    for p in parts:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high - low
print(total)
PY
)
for n in ${INSTANCES:-1 2 3}; do
  config "${run}_$n"
  python3 benches/scaling/run.py --bin "$bin" --config "$work/${run}_$n.yaml" \
    --instances "$n" --clickhouse "$clickhouse" --database "${run}_$n" \
    --expect "$expect" >>"$work/scaling.jsonl"
done
python3 - "$work/scaling.jsonl" "$(nproc)" "$partitions" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{rows[0]['records']} records, {sys.argv[3]} partitions, {sys.argv[2]} cores; "
      "one run each, same topics, same broker and ClickHouse")
print("| instances | wall to all committed (s) | records/s | vs 1 | CPU µs/record | peak RSS per instance (MiB) |")
print("|---|---|---|---|---|---|")
base = rows[0]["records_per_s"]
for r in rows:
    print(f"| {r['instances']} | {r['wall_s']:.1f} | {r['records_per_s']} | "
          f"{r['records_per_s'] / base:.2f}× | {r['cpu_us_per_record']:.2f} | "
          f"{', '.join(str(x) for x in r['peak_rss_mib'])} |")
PY
