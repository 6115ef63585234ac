#!/usr/bin/env bash
# Every test: unit and property tests, integration and end-to-end tests against the real
# Tansu and ClickHouse started here (and the two-shard cluster's distributed DDL), the
# broker harness at a small size, the migrations on
# current ClickHouse (chdb), promtool (metrics, and the Prometheus rules' unit tests),
# amtool, the Grafana boards' panel queries, the deployment files against the Compose and
# Kubernetes schemas, and the HTML report in headless Chromium. Idempotent;
# leaves the servers running for inspection unless CX_STOP_AFTER_TESTS=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source deploy/local/env.sh
# Tests use throwaway topics, so a broker that a restart does not cure is recreated empty.
CX_BROKER_RECOVER=recreate deploy/local/up.sh
# The two-shard ClickHouse cluster: `up` checks that a statement ON CLUSTER reaches both;
# the end-to-end tests named `..._two_shard_cluster` run on it.
deploy/local/cluster.sh up
export CX_TEST_KAFKA="127.0.0.1:$CX_KAFKA_PORT"
export CX_TEST_CLICKHOUSE="http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT"
export CX_TEST_CLICKHOUSE_HTTPS="https://127.0.0.1:$CX_CLICKHOUSE_HTTPS_PORT"
export CX_TEST_CLICKHOUSE_CA="$CXSTREAM_RUN/clickhouse/tls/ca.pem"
export CX_TEST_ALERTMANAGER="http://127.0.0.1:$CX_ALERTMANAGER_PORT"
export CX_TEST_BROKER_LOG="$CXSTREAM_RUN/tansu/broker.log"
export CX_TEST_CLUSTER_URL="http://127.0.0.1:$CX_SHARD1_HTTP_PORT"
export CX_TEST_CLUSTER_NAME=cx_two_shards
python3 tests/chdb_dialect.py
# The deployment: compose file and manifests against the Compose and Kubernetes schemas,
# consistent with the configs and the image.
# Failpoints compiled in (inert unless a crash test sets FAILPOINTS), as the tests build it.
cargo build -q -p cxstream --features failpoints
python3 tests/deploy/validate.py --cxstream target/debug/cxstream
# The Grafana boards: every panel's query on a simulated month (ClickHouse 18.16 and chdb),
# the funnel board against the funnel views, PromQL over a recorded /metrics, the schema.
CX_CXSTREAM_BIN=target/debug/cxstream tests/grafana/run.sh
# The health rules and their unit tests, and the example Alertmanager routing.
promtool check rules deploy/prometheus/cxstream.rules.yml
promtool test rules deploy/prometheus/tests/*.yml
amtool check-config deploy/prometheus/alertmanager.yml >/dev/null
status=0
# The fault battery's tests (services/cxstream/tests/faults.rs) each add a line to the
# scorecard, printed after the tests.
export CX_FAULTS_SCORECARD="$root/target/faults-scorecard.jsonl"
rm -f "$CX_FAULTS_SCORECARD"
cargo test --workspace --all-targets --features cxstream/failpoints --no-fail-fast || status=$?
python3 tests/faults/scorecard.py || true
if ((status)); then
  # Tell a wedged broker from failing tests, with the broker's own words.
  deploy/local/probe.sh 5000 || echo "test: the broker stopped serving during the tests" >&2
fi
if [[ "${CX_STOP_AFTER_TESTS:-0}" == "1" ]]; then deploy/local/down.sh; fi
exit $status
