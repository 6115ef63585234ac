#!/usr/bin/env bash
# The Grafana boards' test on data of its own: a simulated month through the real pipeline
# into a fresh database (fresh topics too: topics are never deleted), /metrics recorded from
# the journey service while it works, then every panel's query run by check_panels.py.
# Needs the local stack's broker and ClickHouse (CX_TEST_KAFKA, CX_TEST_CLICKHOUSE) and a
# built target/release/cxstream (CX_CXSTREAM_BIN). The database is dropped when the check
# passes (CX_PANELS_KEEP=1 keeps it); CX_RECORD_METRICS=1 also replaces the committed
# recording tests/grafana/metrics.recorded.prom with this run's.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bin="${CX_CXSTREAM_BIN:-$root/target/release/cxstream}"
kafka="${CX_TEST_KAFKA:-127.0.0.1:19092}"
clickhouse="${CX_TEST_CLICKHOUSE:-http://127.0.0.1:18123}"
run="panels_$(date +%s%3N)"
dir="$(mktemp -d "${TMPDIR:-/tmp}/cxstream-$run.XXXXXX")"
cfg="$dir/cxstream.yaml"
cat >"$cfg" <<EOF
kafka:
  brokers: $kafka
topics:
  touchpoints: t.$run.touchpoints
  survey_responses: t.$run.answers
  aggregates: t.$run.aggregates
  alerts: t.$run.alerts
  dlq: t.$run.dlq
  partitions: 4
clickhouse:
  url: $clickhouse
  database: t_$run
journey:
  maps: [$root/schemas/journeys/retail.yaml]
  group_id: g.$run
  flush_interval_ms: 200
  max_batch_records: 5000
  compact_after_batches: 4
  idle_release_ms: 500
  join_timeout_ms: 12000
# Port 0: parallel runs never collide; the bound address is read from the log.
http:
  listen: 127.0.0.1:0
log:
  level: info
EOF
echo "grafana panels: topics t.$run.*, database t_$run, files in $dir"
trap 'status=$?; ((status == 0)) || echo "grafana panels: failed; database t_$run and $dir are kept" >&2' EXIT
cx() { "$bin" --config "$cfg" "$@"; }
cx topics >/dev/null
cx migrate >/dev/null
# The journeys scenario has what every panel shows: late and future events, dead letters,
# steps that convert or not, off-map touchpoints, customers who come back.
timeout 300 "$bin" --config "$cfg" simulate --customers 2000 --days 30 --seed 42 --scenario journeys \
  --bad-records 20 --ground-truth "$dir/ground-truth.csv" >"$dir/simulate.log" 2>&1

# A wedged broker must not hang CI: the journey gets 10 minutes (it needs ~15 s here).
timeout 600 "$bin" --config "$cfg" journey --until-caught-up >"$dir/journey.log" 2>&1 &
journey=$!
addr=""
for _ in $(seq 100); do
  addr="$(grep -o 'addr=[0-9.:]*' "$dir/journey.log" | head -1 | cut -d= -f2 || true)"
  [[ -n "$addr" ]] || ! kill -0 "$journey" 2>/dev/null || { sleep 0.1; continue; }
  break
done
# Scrapes while the service reads, commits and compacts: rates need at least two of them.
mkdir -p "$dir/scrapes"
n=0
while [[ -n "$addr" ]] && kill -0 "$journey" 2>/dev/null; do
  if curl -sf "http://$addr/metrics" -o "$dir/scrapes/part"; then
    n=$((n + 1))
    mv "$dir/scrapes/part" "$dir/scrapes/$(printf %05d $n).prom"
  fi
  sleep 0.25
done
if ! wait "$journey"; then
  echo "grafana panels: cxstream journey failed:" >&2
  tail -20 "$dir/journey.log" >&2
  exit 1
fi
if ((n < 2)); then
  echo "grafana panels: only $n scrape(s) of $addr/metrics while the journey ran" >&2
  exit 1
fi
# At most 12 scrapes: 8 evenly spread from the first, then the last 4 (what happens at the
# end of a catch-up, such as the bad records the simulator sends last, shows in every
# rate() over them).
{
  picks=()
  if ((n <= 12)); then
    picks=($(seq 1 "$n"))
  else
    for i in $(seq 0 7); do picks+=($((1 + i * (n - 5) / 7))); done
    picks+=($((n - 3)) $((n - 2)) $((n - 1)) "$n")
  fi
  i=0
  for k in "${picks[@]}"; do
    echo "# cxstream-scrape $i"
    cat "$dir/scrapes/$(printf %05d $k).prom"
    i=$((i + 1))
  done
} >"$dir/metrics.prom"
if [[ "${CX_RECORD_METRICS:-0}" == "1" ]]; then
  cp "$dir/metrics.prom" tests/grafana/metrics.recorded.prom
fi

# The incidents on the boards: the month above is too quiet for the alerter to judge, so a
# busier shop (tests/grafana/shop.yaml), whose app checkout converts 60 % less for two hours
# on its second day, goes through the pipeline and the alerter into a database of its own;
# the queries of the alerts table run there.
acfg="$dir/alerts.yaml"
sed -e "s/t\.$run\./t.$run.a./" -e "s/t_$run\$/t_${run}_alerts/" -e "s/g\.$run\$/g.$run.a/" \
  -e "s|maps: \[.*\]|maps: [$root/tests/grafana/shop.yaml]|" "$cfg" >"$acfg"
cat >"$dir/incidents.yaml" <<EOF
- kind: step_drop
  step: checkout
  channel: app
  drop: 0.6
  start_hours: 25
  minutes: 120
EOF
ax() { timeout 300 "$bin" --config "$acfg" "$@"; }
ax topics >/dev/null
ax migrate >/dev/null
ax simulate --customers 10000 --days 1.25 --seed 43 --scenario journeys --start 2026-10-01T00:00:00Z \
  --incidents "$dir/incidents.yaml" --ground-truth "$dir/alerts-truth.csv" >"$dir/alerts-simulate.log" 2>&1
for step in "journey --until-caught-up" "alerter --until-caught-up"; do
  # shellcheck disable=SC2086
  if ! ax $step >"$dir/alerts-${step%% *}.log" 2>&1; then
    echo "grafana panels: cxstream $step (alerts) failed:" >&2
    tail -20 "$dir/alerts-${step%% *}.log" >&2
    exit 1
  fi
done

python3 tests/grafana/check_panels.py --clickhouse "$clickhouse" --database "t_$run" \
  --alerts-database "t_${run}_alerts" --metrics "$dir/metrics.prom"
if [[ "${CX_PANELS_KEEP:-0}" != "1" ]]; then
  for db in "t_$run" "t_${run}_alerts"; do
    curl -sf "$clickhouse/" --data-binary "DROP DATABASE IF EXISTS $db" >/dev/null
  done
  rm -rf "$dir"
fi
