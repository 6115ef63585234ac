#!/usr/bin/env bash
# The soak at full size: a day of event time produced at a steady rate by a Python producer
# (a fixed population, retries, answers) through a journey service that runs all along,
# its memory, open files, lag and tracked customers sampled every second
# (services/cxstream/tests/soak.rs, which the test suite runs at a small size).
#   CUSTOMERS (default 50000), TOUCHPOINTS (default 1000000), RATE records/s (default 5000),
#   SAMPLES (CSV of the samples, default target/soak-samples.csv), FLUSH_MS (a batch every,
#   default 1000), COMPACT_EVERY (batches, default 30 s worth). Uses the local stack.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source deploy/local/env.sh
deploy/local/install.sh >/dev/null
cargo build --release -q -p cxstream
CX_CXSTREAM_BIN="$root/target/release/cxstream" deploy/local/up.sh >/dev/null
export CX_TEST_KAFKA="127.0.0.1:$CX_KAFKA_PORT"
export CX_TEST_CLICKHOUSE="http://127.0.0.1:$CX_CLICKHOUSE_HTTP_PORT"
export CX_SOAK_CUSTOMERS="${CUSTOMERS:-50000}" CX_SOAK_TOUCHPOINTS="${TOUCHPOINTS:-1000000}"
export CX_SOAK_RATE="${RATE:-5000}" CX_SOAK_SAMPLES="${SAMPLES:-$root/target/soak-samples.csv}"
export CX_SOAK_FLUSH_MS="${FLUSH_MS:-1000}"
[[ -z "${COMPACT_EVERY:-}" ]] || export CX_SOAK_COMPACT_EVERY="$COMPACT_EVERY"
log="$(mktemp)"
status=0
cargo test --release -q -p cxstream --test soak -- --nocapture >"$log" 2>&1 || status=$?
grep -E "^(soak:|  [a-zA-Z]|test result|.*panicked|service:)" "$log" || true
((status == 0)) || echo "soak failed; its whole output: $log" >&2
echo "samples: $CX_SOAK_SAMPLES"
exit $status
