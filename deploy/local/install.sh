#!/usr/bin/env bash
# Idempotently installs everything the local stack needs on a Debian machine:
# ClickHouse, Prometheus (+promtool), Alertmanager from apt; Tansu built once from
# crates.io and cached outside the repo; chdb (modern ClickHouse dialect check) from PyPI.
set -euo pipefail
source "$(dirname "$0")/env.sh"

need_apt=()
command -v clickhouse-server >/dev/null || need_apt+=(clickhouse-server clickhouse-client)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
  echo "install: apt packages ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the package services from being wired to systemd units we never use.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [[ ! -x "$TANSU_BIN" ]]; then
  echo "install: building tansu $TANSU_VERSION into $TANSU_ROOT (about 15 minutes, once)"
  mkdir -p "$TANSU_ROOT"
  # A private target dir keeps the broker's build out of the workspace's target/.
  CARGO_TARGET_DIR="$CXSTREAM_CACHE/tansu-build" \
    cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$TANSU_ROOT"
  rm -rf "$CXSTREAM_CACHE/tansu-build"
fi

if ! python3 -c 'import chdb' 2>/dev/null; then
  echo "install: pip chdb"
  python3 -m pip install -q chdb
fi
echo "install: ok (tansu at $TANSU_BIN)"
