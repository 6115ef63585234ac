# How the local scripts (up.sh, cluster.sh) run their servers: a pid file per server.
# Sourced, not executed.

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() { # pid file, quarter-seconds to wait for SIGTERM before SIGKILL
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$2"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

wait_for() { # name, check command... (60 s, then the calling script stops)
  local name=$1; shift
  for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "$(basename "$0" .sh): $name did not answer within 60 s; see $CXSTREAM_RUN" >&2; exit 1
}
