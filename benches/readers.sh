#!/usr/bin/env bash
# Three readers of the same records from the same broker, in one run: a bare rdkafka
# consumer (the floor: reads, decodes nothing), the Python peer a user would write instead
# (benches/readers/python_peer.py: confluent-kafka + fastavro, per-minute counts in dicts)
# and `cxstream journey --until-caught-up` (journeys, facts and aggregates committed to
# ClickHouse). Prints wall time, CPU µs per record and peak RSS of each; cxstream's fixed
# start + exit (the same command on empty topics) is reported apart.
#   CUSTOMERS (default 300000), DAYS (default 1). Uses the local stack (deploy/local/up.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream -p cxstream-benches
bin="$root/target/release"
CX_CXSTREAM_BIN="$bin/cxstream" deploy/local/up.sh >/dev/null
work="$(mktemp -d)"
broker="127.0.0.1:$CX_KAFKA_PORT"
config() { # run name -> config file
  cat >"$work/$1.yaml" <<YAML
topics: {touchpoints: $1.touchpoints, survey_responses: $1.answers, dlq: $1.dlq, aggregates: $1.aggregates, alerts: $1.alerts, identities: $1.identities, alerter_members: $1.members, erasures: $1.erasures}
clickhouse: {database: $1}
journey: {group_id: $1}
http: {listen: "127.0.0.1:0"}
log: {level: warn}
YAML
  "$bin/cxstream" -c "$work/$1.yaml" topics >/dev/null
  "$bin/cxstream" -c "$work/$1.yaml" migrate >/dev/null
}
run="readers$(date +%s)"
config "$run"
config "${run}_empty"
"$bin/cxstream" -c "$work/$run.yaml" simulate --customers "${CUSTOMERS:-300000}" \
  --days "${DAYS:-1}" --ground-truth "$work/truth.csv" 2>&1 | tail -1
measure=(python3 "$root/benches/readers/measure.py" "$work/costs.jsonl")
"${measure[@]}" bare "$bin/bare_consumer" "$broker" "$run.touchpoints" "$run.answers"
"${measure[@]}" python python3 "$root/benches/readers/python_peer.py" "$broker" \
  "$run.touchpoints" "$run.answers"
"${measure[@]}" cxstream "$bin/cxstream" -c "$work/$run.yaml" journey --until-caught-up
"${measure[@]}" cxstream_empty "$bin/cxstream" -c "$work/${run}_empty.yaml" journey --until-caught-up
records=$(curl -s "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/" \
  --data-binary "SELECT sum(records) FROM $run.committed_records")
python3 - "$records" "$work/costs.jsonl" <<'PY'
import json, sys
records = int(sys.argv[1])
costs = {c["reader"]: c for c in map(json.loads, open(sys.argv[2]))}
fixed = costs.pop("cxstream_empty")
bare = costs["bare"]["wall_s"]
print(f"{records} records (committed by cxstream); one run, same topics, same broker")
print("| reader | wall (s) | wall vs bare | CPU (s) | CPU µs/record | peak RSS (MiB) |")
print("|---|---|---|---|---|---|")
for name, c in costs.items():
    print(f"| {name} | {c['wall_s']:.2f} | {100 * bare / c['wall_s']:.0f} % | {c['cpu_s']:.2f} "
          f"| {1e6 * c['cpu_s'] / records:.2f} | {c['peak_rss_mib']:.0f} |")
print(f"cxstream fixed start + exit (empty topics): {fixed['wall_s']:.2f} s wall, "
      f"{fixed['cpu_s']:.2f} s CPU, {fixed['peak_rss_mib']:.0f} MiB; "
      f"without it: {costs['cxstream']['wall_s'] - fixed['wall_s']:.2f} s wall, "
      f"{1e6 * (costs['cxstream']['cpu_s'] - fixed['cpu_s']) / records:.2f} µs CPU/record")
PY
