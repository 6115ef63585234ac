#!/usr/bin/env bash
# History benchmark (README § Benchmarks): a month of messy traffic replayed in event time,
# checked cell by cell against the simulator's ground truth, and the rolling NPS read timed
# as committed batches accumulate: few large batches, many small ones (as live traffic
# commits them), and many small ones with compaction; then few large batches again with
# every journey held in memory (journey.let_go_idle_journeys: false). Each catch-up also
# prints its peak RSS and how many idle journeys it let go and read back from ClickHouse.
#   CUSTOMERS (default 50000), DAYS (default 30), SEED (default 7), SMALL_BATCH (default 500)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream
bin="$root/target/release/cxstream"
CX_CXSTREAM_BIN="$bin" deploy/local/up.sh >/dev/null
run="hist$(date +%s)"
dir="$(mktemp -d)"
small="${SMALL_BATCH:-500}"
config() { # name max_batch_records compact_after_batches let_go_idle_journeys
  cat >"$dir/$1.yaml" <<YAML
topics: {touchpoints: $run.touchpoints, survey_responses: $run.answers, dlq: $run.dlq, aggregates: $run.aggregates, alerts: $run.alerts}
clickhouse: {database: ${run}_$1}
journey: {group_id: ${run}_$1, max_batch_records: $2, compact_after_batches: $3, let_go_idle_journeys: ${4:-true}}
http: {listen: "127.0.0.1:0"}
log: {level: info}
YAML
}
config few 200000 0
"$bin" -c "$dir/few.yaml" topics >/dev/null 2>"$dir/topics.log" || { cat "$dir/topics.log"; exit 1; }
start=$(date +%s.%N)
"$bin" -c "$dir/few.yaml" simulate --customers "${CUSTOMERS:-50000}" --days "${DAYS:-30}" \
  --seed "${SEED:-7}" --scenario messy --ground-truth "$dir/truth.csv" >/dev/null \
  2>"$dir/simulate.log" || { tail -20 "$dir/simulate.log"; exit 1; }
grep "simulate: produced" "$dir/simulate.log" || true
echo "simulated and produced in $(python3 -c "import time; print(round(time.time() - $start))") s"
for variant in "few 200000 0 true" "many $small 0 true" "compacted $small 100 true" \
  "held 200000 0 false"; do
  read -r name batch compact let_go <<<"$variant"
  config "$name" "$batch" "$compact" "$let_go"
  "$bin" -c "$dir/$name.yaml" migrate 2>/dev/null >/dev/null
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$dir/$name.rss" \
    "$bin" -c "$dir/$name.yaml" journey --until-caught-up 2>"$dir/$name.log" ||
    { tail -20 "$dir/$name.log"; exit 1; }
  secs=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  grep -E "WARN|ERROR" "$dir/$name.log" | tail -5 || true
  caught=$(grep "caught up" "$dir/$name.log" | tail -1)
  echo "$name: peak RSS $(( $(tail -1 "$dir/$name.rss") / 1024 )) MiB;" \
    "let go at the end: $(sed -n 's/.*journeys_let_go=\([0-9]*\).*/\1/p' <<<"$caught")," \
    "read back: $(sed -n 's/.*journeys_read_back=\([0-9]*\).*/\1/p' <<<"$caught")"
  python3 benches/history/check.py "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT" "${run}_$name" \
    "$dir/truth.csv" "$name (max_batch_records $batch, compact_after_batches $compact)" "$secs"
done
