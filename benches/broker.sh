#!/usr/bin/env bash
# Broker harness: measures each Tansu storage engine on the same workload and checks that
# a consumer group reads every record exactly once through consumer kills (SIGKILL and
# SIGTERM), topics created throughout and a broker restart with its data. Each engine
# gets a fresh data directory and RUNS consecutive runs on it (the second run starts on
# the first one's data). Re-run it when Tansu releases a new version.
#   ENGINES  (default "sqlite postgres memory")   RECORDS (default 5000000)
#   RUNS     (default 2)                          CONSUMERS (default 3)
# Results: a line per run here, JSON lines in .run/broker-bench/results.jsonl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream-benches --bin broker_harness
harness="$root/target/release/broker_harness"
base="$CXSTREAM_RUN/broker-bench"
mkdir -p "$base"
results="$base/results.jsonl"
port=19192
pg_port=15532
status=0
for engine in ${ENGINES:-sqlite postgres memory}; do
  dir="$base/$engine"
  deploy/local/postgres.sh wipe "$dir/pg"
  rm -rf "$dir"
  mkdir -p "$dir/broker"
  storage_dir=()
  case "$engine" in
    sqlite) storage="sqlite://tansu.db"; storage_dir=(--storage-dir "$dir/broker") ;;
    memory) storage="memory://tansu/" ;;
    postgres)
      storage=$(deploy/local/postgres.sh start "$dir/pg" "$pg_port")
      storage_dir=(--storage-dir "$dir/pg") ;;
    *) echo "broker.sh: unknown engine $engine (sqlite, postgres, memory)" >&2; exit 2 ;;
  esac
  for n in $(seq 1 "${RUNS:-2}"); do
    "$harness" run --engine "$engine" --tansu "$TANSU_BIN" --storage "$storage" \
      --workdir "$dir/broker" "${storage_dir[@]}" --port "$port" \
      --records "${RECORDS:-5000000}" --consumers "${CONSUMERS:-3}" \
      --run "bb$(date +%s)-$engine-$n" --json "$results" || status=1
  done
  deploy/local/postgres.sh stop "$dir/pg"
done
exit $status
