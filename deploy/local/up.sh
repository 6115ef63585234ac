#!/usr/bin/env bash
# Starts the local stack on loopback (idempotent): Tansu (Kafka API) and ClickHouse, with
# all data, logs and pids under $CXSTREAM_RUN. Waits until both answer.
#   CX_BROKER_STORAGE=sqlite (default) | memory. Tansu 0.6.0's memory engine returns the
#   wrong record batch for some fetch offsets (records are skipped), so sqlite is the default.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
"$here/install.sh"
mkdir -p "$CXSTREAM_RUN"/{tansu,clickhouse/{log,data,tmp,user_files}}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! alive "$CXSTREAM_RUN/tansu.pid"; then
  case "${CX_BROKER_STORAGE:-sqlite}" in
    memory) storage="memory://tansu/" ;;
    sqlite) storage="sqlite://tansu.db" ;;
    *) echo "up: CX_BROKER_STORAGE must be memory or sqlite" >&2; exit 2 ;;
  esac
  (cd "$CXSTREAM_RUN/tansu" && exec nohup "$TANSU_BIN" broker \
      --storage-engine "$storage" \
      --listener-url "tcp://127.0.0.1:$CX_KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$CX_KAFKA_PORT" \
      >"$CXSTREAM_RUN/tansu/broker.log" 2>&1 & echo $! >"$CXSTREAM_RUN/tansu.pid")
fi

if ! alive "$CXSTREAM_RUN/clickhouse.pid"; then
  sed -e "s#@RUN@#$CXSTREAM_RUN#g" -e "s#@HTTP_PORT@#$CX_CLICKHOUSE_HTTP_PORT#g" \
      -e "s#@TCP_PORT@#$CX_CLICKHOUSE_TCP_PORT#g" "$here/clickhouse/config.xml" \
      >"$CXSTREAM_RUN/clickhouse/config.xml"
  cp "$here/clickhouse/users.xml" "$CXSTREAM_RUN/clickhouse/users.xml"
  (cd "$CXSTREAM_RUN/clickhouse" && exec nohup clickhouse-server \
      --config-file="$CXSTREAM_RUN/clickhouse/config.xml" \
      >"$CXSTREAM_RUN/clickhouse/log/stdout.log" 2>&1 & echo $! >"$CXSTREAM_RUN/clickhouse.pid")
fi

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "up: $name did not answer within 60 s; see $CXSTREAM_RUN" >&2; exit 1
}
wait_for clickhouse curl -sf "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/ping"
wait_for tansu bash -c "exec 3<>/dev/tcp/127.0.0.1/$CX_KAFKA_PORT"
# A server that could not bind (port taken by a process this script does not own) exits
# while the port still answers: say so instead of testing against someone else's server.
for svc in tansu clickhouse; do
  if ! alive "$CXSTREAM_RUN/$svc.pid"; then
    echo "up: $svc exited; is its port taken by another process? log: $CXSTREAM_RUN/$svc/" >&2
    exit 1
  fi
done
echo "up: kafka 127.0.0.1:$CX_KAFKA_PORT, clickhouse http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT (data in $CXSTREAM_RUN)"
