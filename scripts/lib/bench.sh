# Sourced by scripts/bench.sh, bench-scale.sh and bench-cluster.sh: logging,
# the psql/redis-cli shorthands, loopback ports and readiness waits they share.
# The caller sets BENCH_TAG (the log prefix), PG_PORT, REDIS_PORT and BENCH_DB.
# Background processes go in PIDS; `track_pids_and_work` makes them (and
# $WORK) go away on exit.

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }
psql_bench() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$BENCH_DB" -v ON_ERROR_STOP=1 -qtA "$@"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# Kills every process in PIDS and removes $WORK on exit.
track_pids_and_work() {
  PIDS=()
  trap stop_pids_and_work EXIT
}
stop_pids_and_work() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# A loopback port nobody listens on (bounded search from $1).
free_port() {
  local p
  for p in $(seq "$1" $(( $1 + 500 ))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port from $1"
}

# Waits (60 s at most) until $1 answers 2xx.
wait_ready() {
  local _
  for _ in $(seq 120); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.5; done
  die "$1 never became ready"
}
