#!/usr/bin/env bash
# Stops the local stack started by up.sh. `--wipe` also deletes its data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
# The two-shard cluster, if cluster.sh started it.
"$here/cluster.sh" down >/dev/null
for svc in cxstream-journey tansu clickhouse alertmanager; do
  pidf="$CXSTREAM_RUN/$svc.pid"
  [[ -f "$pidf" ]] || continue
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
done
if [[ "${1:-}" == "--wipe" ]]; then
  "$here/postgres.sh" wipe "$CXSTREAM_RUN/postgres"
  rm -rf "$CXSTREAM_RUN"
else
  "$here/postgres.sh" stop "$CXSTREAM_RUN/postgres"
fi
echo "down: stopped"
