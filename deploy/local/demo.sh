#!/usr/bin/env bash
# The demo: installs what is missing, starts Tansu and ClickHouse, creates topics and tables,
# simulates CX traffic (from empty servers), runs the journey service and then the alerter until
# they have caught up, prints a summary
# and writes it as a page with charts (.run/demo/report.html).
#   CUSTOMERS (default 10000), DAYS (default 30), SEED (default 42), SCENARIO (default journeys:
#   journeys as they really happen, delivered as real producers do; `identity` adds customers
#   browsing anonymously before they sign in and turns identity stitching on; see
#   `cxstream simulate --help`),
#   CXSTREAM_JOURNEY_MAPS (default: the retail and support maps, measured at once)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source deploy/local/env.sh
SCENARIO="${SCENARIO:-journeys}"
if [[ "$SCENARIO" == identity ]]; then
  export CXSTREAM_IDENTITY_ENABLED="${CXSTREAM_IDENTITY_ENABLED:-true}"
fi
export CXSTREAM_JOURNEY_MAPS="${CXSTREAM_JOURNEY_MAPS:-schemas/journeys/retail.yaml,schemas/journeys/support.yaml}"
# Every demo starts from empty servers, so its numbers are the simulation's alone.
deploy/local/down.sh --wipe >/dev/null
# Before the build: it needs OpenSSL's headers (rdkafka's TLS), which install.sh brings.
deploy/local/install.sh
cargo build --release -p cxstream
bin="$root/target/release/cxstream"
CX_CXSTREAM_BIN="$bin" deploy/local/up.sh
"$bin" topics
"$bin" migrate
mkdir -p "$CXSTREAM_RUN/demo"
"$bin" simulate --customers "${CUSTOMERS:-10000}" --days "${DAYS:-30}" --seed "${SEED:-42}" \
  --scenario "$SCENARIO" --bad-records 20 --ground-truth "$CXSTREAM_RUN/demo/ground-truth.csv"
CXSTREAM_HTTP_LISTEN=127.0.0.1:0 "$bin" journey --until-caught-up
CXSTREAM_HTTP_LISTEN=127.0.0.1:0 "$bin" alerter --until-caught-up
echo
"$bin" report --html "$CXSTREAM_RUN/demo/report.html"
echo
echo "Data stays in ClickHouse (database cx) at http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT; e.g."
echo "  curl -s 'http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT/?query=SELECT+window,stage,nps_n,round(nps,1)+FROM+cx.rolling_metrics+LIMIT+5'"
echo "Stop the servers with deploy/local/down.sh (add --wipe to delete their data)."
