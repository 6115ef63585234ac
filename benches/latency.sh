#!/usr/bin/env bash
# Event -> committed latency at a steady rate: a running `cxstream journey` and a Python
# producer (benches/latency/latency.py) that times each record from its produce() call to
# the first committed batch holding it, watching ClickHouse's commit log every 20 ms.
# Prints p50, p90, p99 and max in milliseconds.
#   RATE records/s (default 4000: about half of what the local broker delivers to a bare
#   consumer, see benches/readers.sh), DURATION seconds (default 60), FLUSH_MS (the journey
#   service's flush interval, default 1000), INSERTS (clickhouse.max_concurrent_inserts,
#   default the service's). Uses the local stack (deploy/local/up.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream
bin="$root/target/release/cxstream"
CX_CXSTREAM_BIN="$bin" deploy/local/up.sh >/dev/null
work="$(mktemp -d)"
run="latency$(date +%s)"
cat >"$work/cxstream.yaml" <<YAML
topics: {touchpoints: $run.touchpoints, survey_responses: $run.answers, dlq: $run.dlq, aggregates: $run.aggregates, alerts: $run.alerts, identities: $run.identities, alerter_members: $run.members, erasures: $run.erasures}
clickhouse: {database: $run${INSERTS:+, max_concurrent_inserts: $INSERTS}}
journey: {group_id: $run, flush_interval_ms: ${FLUSH_MS:-1000}}
http: {listen: "127.0.0.1:0"}
log: {level: info}
YAML
"$bin" -c "$work/cxstream.yaml" topics >/dev/null
"$bin" -c "$work/cxstream.yaml" migrate >/dev/null
"$bin" -c "$work/cxstream.yaml" journey 2>"$work/journey.log" &
journey=$!
trap 'kill -TERM $journey 2>/dev/null || true' EXIT
# Joined and assigned before the first record, so that start-up is not counted.
for _ in $(seq 1 60); do
  grep -q "partition assigned" "$work/journey.log" 2>/dev/null && break
  sleep 1
done
python3 "$root/benches/latency/latency.py" --brokers "127.0.0.1:$CX_KAFKA_PORT" \
  --topic "$run.touchpoints" --clickhouse "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/" \
  --database "$run" --rate "${RATE:-4000}" --seconds "${DURATION:-60}"
