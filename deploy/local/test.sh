#!/usr/bin/env bash
# Every test: lint-free build, unit and property tests, integration and end-to-end tests
# against the real Tansu and ClickHouse started here, the migrations on current ClickHouse
# (chdb), and promtool. Idempotent; leaves the servers running for inspection unless
# CX_STOP_AFTER_TESTS=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/up.sh
export CX_TEST_KAFKA="127.0.0.1:$CX_KAFKA_PORT"
export CX_TEST_CLICKHOUSE="http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT"
python3 tests/chdb_dialect.py
cargo test --workspace --all-targets
if [[ "${CX_STOP_AFTER_TESTS:-0}" == "1" ]]; then deploy/local/down.sh; fi
