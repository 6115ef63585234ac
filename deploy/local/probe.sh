#!/usr/bin/env bash
# Is the local stack serving? `cxstream probe` (a metadata request, a consumer-group round
# trip on a probe topic, a ClickHouse query). On failure it says which server is wedged and
# prints the broker's log lines that matter, instead of letting tests time out one by one.
#   probe.sh [TIMEOUT_MS]     (CX_CXSTREAM_BIN: the cxstream binary to use)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
bin=${CX_CXSTREAM_BIN:-$here/../../target/debug/cxstream}
if out=$(CXSTREAM_KAFKA_BROKERS="127.0.0.1:$CX_KAFKA_PORT" \
         CXSTREAM_CLICKHOUSE_URL="http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT" \
         env -u CXSTREAM_CONFIG "$bin" probe --topic cxstream.probe --create-topic \
         --timeout-ms "${1:-15000}" 2>&1); then
  echo "probe: $out" | sed '2,$s/^/       /'
  exit 0
fi
echo "probe: FAILED — $out" >&2
case "$out" in
  *kafka*)
    echo "probe: the broker at 127.0.0.1:$CX_KAFKA_PORT accepts connections but does not serve" \
         "(wedged). Its last warnings and errors ($CXSTREAM_RUN/tansu/broker.log):" >&2
    grep -aiE 'error|warn|panic' "$CXSTREAM_RUN/tansu/broker.log" 2>/dev/null | tail -15 | cut -c1-400 >&2 || true ;;
  *clickhouse*)
    echo "probe: ClickHouse does not serve; its log: $CXSTREAM_RUN/clickhouse/log/" >&2
    tail -5 "$CXSTREAM_RUN/clickhouse/log/clickhouse-server.err.log" 2>/dev/null >&2 || true ;;
esac
exit 1
