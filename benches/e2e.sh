#!/usr/bin/env bash
# End-to-end benchmark: catch-up throughput of `cxstream journey` on a preloaded topic,
# compared with a bare rdkafka consumer reading the same records from the same broker.
#   CUSTOMERS (default 30000), DAYS (default 2), CLUSTER=1 (also on the two-shard cluster).
#   Uses the local stack (deploy/local/up.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream -p cxstream-benches
bin="$root/target/release"
CX_CXSTREAM_BIN="$bin/cxstream" deploy/local/up.sh >/dev/null
run="bench$(date +%s)"
cfg="$(mktemp -d)/cxstream.yaml"
cat >"$cfg" <<YAML
topics: {touchpoints: $run.touchpoints, survey_responses: $run.answers, dlq: $run.dlq, aggregates: $run.aggregates, alerts: $run.alerts}
clickhouse: {database: $run}
journey: {group_id: $run}
http: {listen: "127.0.0.1:0"}
log: {level: warn}
YAML
"$bin/cxstream" -c "$cfg" topics >/dev/null
"$bin/cxstream" -c "$cfg" migrate >/dev/null
"$bin/cxstream" -c "$cfg" simulate --customers "${CUSTOMERS:-30000}" --days "${DAYS:-2}" \
  --ground-truth "$(dirname "$cfg")/truth.csv" 2>&1 | tail -1
"$bin/bare_consumer" "127.0.0.1:$CX_KAFKA_PORT" "$run.touchpoints" "$run.answers" | tee "$(dirname "$cfg")/bare.txt"
start=$(date +%s.%N)
"$bin/cxstream" -c "$cfg" journey --until-caught-up
end=$(date +%s.%N)
records=$(curl -s "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/" --data-binary "SELECT sum(records) FROM $run.committed_records")
python3 - "$records" "$start" "$end" "$(dirname "$cfg")/bare.txt" <<'PY'
import re, sys
records, start, end, bare = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
secs = end - start
rate = records / secs
bare_rate = float(re.search(r"= (\d+) records/s", open(bare).read()).group(1))
print(f"journey: {records} records in {secs:.2f}s = {rate:.0f} records/s "
      f"({100 * rate / bare_rate:.0f}% of the bare consumer; includes the idle wait before exit)")
PY
# CLUSTER=1: the same records again into a database on the local two-shard cluster
# (deploy/local/cluster.sh), with the catch-up's figures and the committed totals beside the
# single server's, which must be equal.
if [[ "${CLUSTER:-0}" == "1" ]]; then
  deploy/local/cluster.sh up >/dev/null
  ccfg="$(dirname "$cfg")/cluster.yaml"
  cat >"$ccfg" <<YAML
topics: {touchpoints: $run.touchpoints, survey_responses: $run.answers, dlq: $run.dlq, aggregates: $run.aggregates, alerts: $run.alerts}
clickhouse: {url: "http://127.0.0.1:$CX_SHARD1_HTTP_PORT", database: ${run}c, cluster: cx_two_shards}
journey: {group_id: ${run}c}
http: {listen: "127.0.0.1:0"}
log: {level: warn}
YAML
  "$bin/cxstream" -c "$ccfg" migrate >/dev/null
  start=$(date +%s.%N)
  "$bin/cxstream" -c "$ccfg" journey --until-caught-up
  end=$(date +%s.%N)
  totals="SELECT toInt64(sum(records)) FROM DB.committed_records UNION ALL \
    SELECT toInt64(sum(touchpoints) + sum(nps_promoters) + sum(csat_n) + sum(stage_entries)) \
    FROM DB.metrics_minute_committed"
  single=$(curl -s "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/" --data-binary "${totals//DB/$run}" | sort | tr '\n' ' ')
  cluster=$(curl -s "http://127.0.0.1:$CX_SHARD1_HTTP_PORT/" --data-binary "${totals//DB/${run}c}" | sort | tr '\n' ' ')
  python3 - "$records" "$start" "$end" "$single" "$cluster" <<'PY'
import sys
records, start, end, single, cluster = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
for totals in (single, cluster):
    if not all(t.isdigit() for t in totals.split()) or len(totals.split()) != 2:
        sys.exit(f"the committed totals could not be read: {totals}")
secs = end - start
print(f"journey on the two-shard cluster: {records} records in {secs:.2f}s = {records / secs:.0f} records/s")
print(f"committed totals, one server: {single.strip()}; cluster: {cluster.strip()}; "
      + ("equal" if single == cluster else "DIFFERENT"))
sys.exit(0 if single == cluster else 1)
PY
fi
