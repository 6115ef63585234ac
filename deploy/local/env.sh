# Shared paths for the local stack. Sourced, not executed.
# CXSTREAM_CACHE survives clean checkouts (slow builds live here);
# CXSTREAM_RUN holds the servers' data, logs and pids for one checkout.
: "${CXSTREAM_CACHE:=$HOME/.cache/cxstream}"
: "${CXSTREAM_RUN:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.run}"
TANSU_VERSION=0.6.0
TANSU_ROOT="$CXSTREAM_CACHE/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
: "${CX_KAFKA_PORT:=19092}"
: "${CX_CLICKHOUSE_HTTP_PORT:=18123}"
: "${CX_CLICKHOUSE_TCP_PORT:=19000}"
: "${CX_PARTITIONS:=4}"
export CXSTREAM_CACHE CXSTREAM_RUN TANSU_VERSION TANSU_ROOT TANSU_BIN
export CX_KAFKA_PORT CX_CLICKHOUSE_HTTP_PORT CX_CLICKHOUSE_TCP_PORT CX_PARTITIONS
