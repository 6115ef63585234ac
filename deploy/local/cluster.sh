#!/usr/bin/env bash
# A two-shard ClickHouse cluster on loopback, beside the single server of up.sh: ZooKeeper
# (it carries the distributed DDL, `ON CLUSTER`) and two ClickHouse servers, the shards of
# the cluster `cx_two_shards` (deploy/local/clickhouse/shard.xml). Data, logs and pids
# under $CXSTREAM_RUN/cluster.
#   cluster.sh up     start (idempotent; install.sh installs ZooKeeper), then check that a
#                     database created ON CLUSTER reaches both shards
#   cluster.sh down   stop (`down --wipe` also deletes the data)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
source "$here/processes.sh"
run="$CXSTREAM_RUN/cluster"
http_ports=("$CX_SHARD1_HTTP_PORT" "$CX_SHARD2_HTTP_PORT")
tcp_ports=("$CX_SHARD1_TCP_PORT" "$CX_SHARD2_TCP_PORT")

zk_ok() { (exec 3<>"/dev/tcp/127.0.0.1/$CX_ZOOKEEPER_PORT" && echo ruok >&3 && grep -q imok <&3); }

start_zookeeper() {
  mkdir -p "$run/zookeeper/data"
  alive "$run/zookeeper.pid" && return 0
  cat >"$run/zookeeper/zoo.cfg" <<CFG
tickTime=2000
dataDir=$run/zookeeper/data
clientPort=$CX_ZOOKEEPER_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok
CFG
  (cd "$run/zookeeper" && exec nohup java -Xmx256m -cp /usr/share/java/zookeeper.jar \
      org.apache.zookeeper.server.ZooKeeperServerMain "$run/zookeeper/zoo.cfg" \
      >>"$run/zookeeper/zookeeper.log" 2>&1 & echo $! >"$run/zookeeper.pid")
}

start_shard() { # 1 or 2
  local n=$1 dir="$run/shard$1"
  mkdir -p "$dir"/{log,data,tmp,user_files}
  alive "$run/shard$n.pid" && return 0
  cp "$here/clickhouse/users.xml" "$dir/users.xml"
  sed -e "s#@DIR@#$dir#g" \
      -e "s#@HTTP_PORT@#${http_ports[n-1]}#g" \
      -e "s#@TCP_PORT@#${tcp_ports[n-1]}#g" \
      -e "s#@INTERSERVER_PORT@#$((tcp_ports[n-1] + 10))#g" \
      -e "s#@SHARD1_TCP_PORT@#${tcp_ports[0]}#g" \
      -e "s#@SHARD2_TCP_PORT@#${tcp_ports[1]}#g" \
      -e "s#@ZOOKEEPER_PORT@#$CX_ZOOKEEPER_PORT#g" "$here/clickhouse/shard.xml" >"$dir/config.xml"
  (cd "$dir" && exec nohup clickhouse-server --config-file="$dir/config.xml" \
      >"$dir/log/stdout.log" 2>&1 & echo $! >"$run/shard$n.pid")
}

# Both shards answer; false as soon as one of them is gone (or after 60 s).
shards_answer() {
  local n up
  for _ in $(seq 1 120); do
    up=0
    for n in 1 2; do
      alive "$run/shard$n.pid" || return 1
      curl -sf "http://127.0.0.1:${http_ports[n-1]}/ping" >/dev/null 2>&1 && up=$((up + 1))
    done
    ((up == 2)) && return 0
    sleep 0.5
  done
  return 1
}

# The distributed DDL queue works end to end: both shards create the database.
probe() {
  local p
  curl -sf "http://127.0.0.1:${http_ports[0]}/" --data-binary \
    "CREATE DATABASE IF NOT EXISTS cx_cluster_probe ON CLUSTER cx_two_shards" >/dev/null || return 1
  for p in "${http_ports[@]}"; do
    [[ $(curl -sf "http://127.0.0.1:$p/" --data-binary \
        "SELECT count() FROM system.databases WHERE name = 'cx_cluster_probe'") == 1 ]] || return 1
  done
}

case "${1:-}" in
  up)
    "$here/install.sh" >/dev/null
    start_zookeeper
    wait_for zookeeper zk_ok
    # ClickHouse 18.16 crashes at start when its first ZooKeeper session times out (seen
    # here on a loaded machine): a shard that is gone is started again.
    for attempt in 1 2 3; do
      start_shard 1
      start_shard 2
      shards_answer && probe && break
      if ((attempt == 3)); then
        echo "cluster: the shards did not come up or did not run an ON CLUSTER statement; see $run/shard*/log" >&2
        exit 1
      fi
      echo "cluster: a shard is gone or the ON CLUSTER probe failed (attempt $attempt of 3); starting again" >&2
      sleep 2
    done
    echo "cluster: cx_two_shards up: shards http://127.0.0.1:${http_ports[0]} and http://127.0.0.1:${http_ports[1]}, zookeeper 127.0.0.1:$CX_ZOOKEEPER_PORT (data in $run)"
    ;;
  down)
    stop "$run/shard1.pid" 60
    stop "$run/shard2.pid" 60
    stop "$run/zookeeper.pid" 60
    if [[ "${2:-}" == "--wipe" ]]; then rm -rf "$run"; fi
    echo "cluster: stopped"
    ;;
  *)
    echo "usage: cluster.sh up | down [--wipe]" >&2
    exit 2
    ;;
esac
