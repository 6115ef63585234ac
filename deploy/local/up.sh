#!/usr/bin/env bash
# Starts the local stack on loopback (idempotent): Tansu (Kafka API) on the storage engine
# CX_BROKER_STORAGE (postgres by default; see README § Local broker), ClickHouse and
# Alertmanager (the alerter's, deploy/local/alertmanager.yml), with
# all data, logs and pids under $CXSTREAM_RUN. Then probes both for real (a metadata
# request, a consumer-group round trip, a ClickHouse query): a broker that accepts
# connections but does not serve is reported as wedged, with its log lines that matter.
#   CX_BROKER_RECOVER=restart (default): a wedged broker is restarted once with its data.
#   CX_BROKER_RECOVER=recreate: if that does not cure it, its data is wiped and it starts
#     empty (the test suite uses this: its topics are throwaway).
#   CX_CXSTREAM_BIN: the cxstream binary for the probe (default: builds target/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$here/env.sh"
source "$here/processes.sh"
"$here/install.sh"
mkdir -p "$CXSTREAM_RUN"/{tansu,clickhouse/{log,data,tmp,user_files}}
chtls="$CXSTREAM_RUN/clickhouse/tls"

start_broker() {
  if alive "$CXSTREAM_RUN/tansu.pid"; then return 0; fi
  local storage
  case "$CX_BROKER_STORAGE" in
    # Tansu's maintenance (every 10 minutes, and at start) runs a retention DELETE that
    # reads every record in the store, whatever the topics' policies: seen holding a core
    # for minutes at a time on 4.5 M records. No local topic sets cleanup.policy, so it
    # has nothing to do here (it still runs once, at start).
    postgres) storage="$("$here/postgres.sh" start "$CXSTREAM_RUN/postgres" "$CX_POSTGRES_PORT")?maintenance_interval=365days" ;;
    sqlite) storage="sqlite://tansu.db" ;;
    memory) storage="memory://tansu/" ;;
    *) echo "up: CX_BROKER_STORAGE must be postgres, sqlite or memory" >&2; exit 2 ;;
  esac
  echo "$CX_BROKER_STORAGE" >"$CXSTREAM_RUN/tansu/storage"
  (cd "$CXSTREAM_RUN/tansu" && exec nohup "$TANSU_BIN" broker \
      --storage-engine "$storage" \
      --listener-url "tcp://127.0.0.1:$CX_KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$CX_KAFKA_PORT" \
      >>"$CXSTREAM_RUN/tansu/broker.log" 2>&1 & echo $! >"$CXSTREAM_RUN/tansu.pid")
}

stop_broker() { stop "$CXSTREAM_RUN/tansu.pid" 40; }

wipe_broker() {
  stop_broker
  "$here/postgres.sh" wipe "$CXSTREAM_RUN/postgres"
  rm -rf "$CXSTREAM_RUN/tansu"
  mkdir -p "$CXSTREAM_RUN/tansu"
}

start_alertmanager() {
  if alive "$CXSTREAM_RUN/alertmanager.pid"; then return 0; fi
  mkdir -p "$CXSTREAM_RUN/alertmanager/data"
  # No cluster: one local instance, and no gossip port to collide with.
  (cd "$CXSTREAM_RUN/alertmanager" && exec nohup prometheus-alertmanager \
      --config.file="$here/alertmanager.yml" \
      --storage.path="$CXSTREAM_RUN/alertmanager/data" \
      --web.listen-address="127.0.0.1:$CX_ALERTMANAGER_PORT" \
      --cluster.listen-address="" \
      >>"$CXSTREAM_RUN/alertmanager/alertmanager.log" 2>&1 & echo $! >"$CXSTREAM_RUN/alertmanager.pid")
}

# A broker of another engine holds other data: switching engines starts it afresh.
if [[ -f "$CXSTREAM_RUN/tansu/storage" && $(cat "$CXSTREAM_RUN/tansu/storage") != "$CX_BROKER_STORAGE" ]]; then
  echo "up: broker storage changes from $(cat "$CXSTREAM_RUN/tansu/storage") to $CX_BROKER_STORAGE"
  stop_broker
fi
start_broker

stop_clickhouse() { stop "$CXSTREAM_RUN/clickhouse.pid" 60; }

# Users are copied every time: a running server reloads them by itself.
cp "$here/clickhouse/users.xml" "$CXSTREAM_RUN/clickhouse/users.xml"
# The HTTPS port's certificate (throw-away CA, valid 7 days) is renewed a day before it
# expires; a server started with another configuration or certificate is restarted.
if ! openssl x509 -checkend 86400 -noout -in "$chtls/server.pem" >/dev/null 2>&1; then
  "$here/tls-ca.sh" "$chtls" >/dev/null
fi
sed -e "s#@RUN@#$CXSTREAM_RUN#g" -e "s#@HTTP_PORT@#$CX_CLICKHOUSE_HTTP_PORT#g" \
    -e "s#@HTTPS_PORT@#$CX_CLICKHOUSE_HTTPS_PORT#g" \
    -e "s#@TCP_PORT@#$CX_CLICKHOUSE_TCP_PORT#g" "$here/clickhouse/config.xml" \
    >"$CXSTREAM_RUN/clickhouse/config.next"
stamp=$(cat "$CXSTREAM_RUN/clickhouse/config.next" "$chtls/server.pem" | sha256sum)
if alive "$CXSTREAM_RUN/clickhouse.pid" \
    && [[ "$stamp" != "$(cat "$CXSTREAM_RUN/clickhouse/started" 2>/dev/null)" ]]; then
  echo "up: restarting ClickHouse for its new configuration or certificate"
  stop_clickhouse
fi
if ! alive "$CXSTREAM_RUN/clickhouse.pid"; then
  mv "$CXSTREAM_RUN/clickhouse/config.next" "$CXSTREAM_RUN/clickhouse/config.xml"
  echo "$stamp" >"$CXSTREAM_RUN/clickhouse/started"
  (cd "$CXSTREAM_RUN/clickhouse" && exec nohup clickhouse-server \
      --config-file="$CXSTREAM_RUN/clickhouse/config.xml" \
      >"$CXSTREAM_RUN/clickhouse/log/stdout.log" 2>&1 & echo $! >"$CXSTREAM_RUN/clickhouse.pid")
fi
rm -f "$CXSTREAM_RUN/clickhouse/config.next"

start_alertmanager

wait_for clickhouse curl -sf "http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/ping"
wait_for clickhouse-https curl -sf --cacert "$chtls/ca.pem" \
  "https://127.0.0.1:$CX_CLICKHOUSE_HTTPS_PORT/ping"
wait_for alertmanager curl -sf "http://127.0.0.1:$CX_ALERTMANAGER_PORT/-/ready"
wait_for tansu bash -c "exec 3<>/dev/tcp/127.0.0.1/$CX_KAFKA_PORT"
# A server that could not bind (port taken by a process this script does not own) exits
# while the port still answers: say so instead of testing against someone else's server.
for svc in tansu clickhouse alertmanager; do
  if ! alive "$CXSTREAM_RUN/$svc.pid"; then
    echo "up: $svc exited; is its port taken by another process? log: $CXSTREAM_RUN/$svc/" >&2
    exit 1
  fi
done

if [[ -z "${CX_CXSTREAM_BIN:-}" ]]; then
  (cd "$root" && cargo build -q -p cxstream --bin cxstream)
  export CX_CXSTREAM_BIN="$root/target/debug/cxstream"
fi
if ! "$here/probe.sh"; then
  echo "up: restarting the broker with its data" >&2
  stop_broker
  start_broker
  wait_for tansu bash -c "exec 3<>/dev/tcp/127.0.0.1/$CX_KAFKA_PORT"
  if ! "$here/probe.sh"; then
    if [[ "${CX_BROKER_RECOVER:-restart}" != recreate ]]; then
      echo "up: the broker is still wedged. Recreate it empty with deploy/local/down.sh --wipe," \
           "or CX_BROKER_RECOVER=recreate." >&2
      exit 1
    fi
    echo "up: recreating the broker empty (CX_BROKER_RECOVER=recreate)" >&2
    wipe_broker
    start_broker
    wait_for tansu bash -c "exec 3<>/dev/tcp/127.0.0.1/$CX_KAFKA_PORT"
    "$here/probe.sh"
  fi
fi
echo "up: kafka 127.0.0.1:$CX_KAFKA_PORT (tansu, $CX_BROKER_STORAGE storage), clickhouse http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT and https://127.0.0.1:$CX_CLICKHOUSE_HTTPS_PORT (CA $chtls/ca.pem), alertmanager http://127.0.0.1:$CX_ALERTMANAGER_PORT (data in $CXSTREAM_RUN)"
