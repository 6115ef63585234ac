#!/usr/bin/env bash
# A private PostgreSQL cluster for Tansu's postgres storage engine, on loopback, with its
# data in a directory of ours (never a system cluster).
#   postgres.sh start DIR PORT   initialise (once), start, create database `tansu` with
#                                Tansu's schema (once); prints the storage URL
#   postgres.sh stop DIR
#   postgres.sh wipe DIR         stop and delete the data
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR | wipe DIR}
dir=${2:?data directory}
# The server from install.sh (Tansu's read-committed ListOffsets query needs
# PostgreSQL >= 16); psql from Debian's client package.
pg_bin=${CX_PG_BIN:-$PG_ROOT/bin}

# The server refuses to run as root: as root, it runs as the `postgres` user, and a data
# directory that user cannot reach (under root's home, say) lives in /var/lib/cxstream
# with DIR a link to it.
as_pg() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
resolve_dir() {
  if [[ $(id -u) == 0 && ! -e "$dir" ]] && ! runuser -u postgres -- test -x "$(dirname "$dir")" 2>/dev/null; then
    local real
    real=/var/lib/cxstream/pg-$(printf %s "$dir" | sha1sum | cut -c1-12)
    mkdir -p "$real" "$(dirname "$dir")"
    ln -sfn "$real" "$dir"
  fi
  mkdir -p "$dir"
  dir=$(readlink -f "$dir")
}

# Stops the cluster if it runs; a cluster that is not running is fine.
stop() {
  if [[ -f "$dir/PG_VERSION" ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  start)
    port=${3:?port}
    [[ -x "$pg_bin/postgres" ]] || { echo "postgres: no server at $pg_bin (run deploy/local/install.sh)" >&2; exit 1; }
    resolve_dir
    if [[ $(id -u) == 0 ]]; then chown postgres: "$dir"; fi
    chmod 700 "$dir"
    if [[ ! -f "$dir/PG_VERSION" ]]; then
      log=$(mktemp)
      as_pg "$pg_bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >"$log" 2>&1 \
        || { cat "$log" >&2; rm -f "$log"; exit 1; }
      rm -f "$log"
    fi
    if ! as_pg "$pg_bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      as_pg "$pg_bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
        || { tail -20 "$dir/server.log" >&2; exit 1; }
    fi
    psql=(psql -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -qAt)
    if [[ -z $("${psql[@]}" -d postgres -c "select 1 from pg_database where datname = 'tansu'") ]]; then
      "${psql[@]}" -d postgres -c "create database tansu" >/dev/null
      "${psql[@]}" -d tansu -f "$here/tansu/postgres-schema.sql" >/dev/null
    fi
    echo "postgres://postgres@127.0.0.1:$port/tansu"
    ;;
  stop)
    [[ -e "$dir" ]] || exit 0
    dir=$(readlink -f "$dir")
    stop
    ;;
  wipe)
    [[ -e "$dir" ]] || exit 0
    link=$dir
    dir=$(readlink -f "$dir")
    stop
    rm -rf "$dir" "$link"
    ;;
  *) echo "usage: postgres.sh start DIR PORT | stop DIR | wipe DIR" >&2; exit 2 ;;
esac
