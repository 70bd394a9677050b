#!/usr/bin/env bash
# `make bench-scale`: flat cost at scale. Runs the same measurements on a
# small case (a few codes, few users) and a large one (100,000 active bulk
# codes from POST /admin/codes/bulk, 1,000,000 users inserted with SQL), each
# against a fresh dedicated database and Redis key prefix (never the dev
# data), with the release binaries:
#   - the reconciler's pass time (its own log, RUST_LOG=...reconciler=debug)
#     and the CPU share of an idle gateway + its Redis + its PostgreSQL over
#     SCALE_IDLE_SECONDS (from /proc, in cores);
#   - time from `serve` to the first 200 of /healthz after a restart, and after
#     a restart with the prefix's Redis keys deleted (as a FLUSHALL would), then
#     how long until an unused code answers 200 (on-demand rebuild);
#   - a flood of a sold-out code and a burst (the project's loadgen), and the
#     Redis bytes per redeemed slot of the burst's code (MEMORY USAGE);
# and writes bench/results/scale.md with the large/small ratios and `uptime`.
#
# Knobs (environment): SCALE_CODES (100000), SCALE_USERS (1000000),
# SCALE_IDLE_SECONDS (30), BENCH_DURATION (10), BENCH_CONNECTIONS (256),
# BENCH_USERS (20000), BENCH_LIMIT (1000), RECONCILE_INTERVAL_SECONDS (5),
# SCALE_OUT (bench/results/scale.md), SCALE_NO_BUILD=1 (use the release
# binaries as they are).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
PG_PORT=${PG_PORT:-5479}
REDIS_PORT=${REDIS_PORT:-6479}
STATE_DIR=${SERVICES_DIR:-$ROOT/.local}
BENCH_DB=redeem_gateway_bench_scale
PREFIX=benchscale
BIG_CODES=${SCALE_CODES:-100000}
BIG_USERS=${SCALE_USERS:-1000000}
IDLE=${SCALE_IDLE_SECONDS:-30}
DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-256}
LG_USERS=${BENCH_USERS:-20000}
LIMIT=${BENCH_LIMIT:-1000}
INTERVAL=${RECONCILE_INTERVAL_SECONDS:-5}
OUT=${SCALE_OUT:-bench/results/scale.md}
WORK=$(mktemp -d /tmp/redeem-bench-scale.XXXXXX)
MAX_BULK=20000  # per request: one big insert can outrun the statement timeout on a loaded machine

BENCH_TAG=bench-scale
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
now() { date +%s.%N; }

GW_PID=
cleanup() {
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

wipe_prefix() {
  rcli --scan --pattern "$PREFIX:*" | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" unlink >/dev/null
}

fresh_database() {
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $BENCH_DB" >/dev/null
  wipe_prefix
}

gateway_env() {
  export APP_ENV=dev LOG_FORMAT=json RUST_LOG="warn,redeem_gateway::reconciler=debug"
  export RATE_LIMIT_ENABLED=false METRICS_ADDR=off RECONCILE_INTERVAL_SECONDS=$INTERVAL
  export DATABASE_URL="postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$BENCH_DB"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" REDIS_KEY_PREFIX=$PREFIX
  export HTTP_ADDR="127.0.0.1:$GW_PORT" HTTP_WORKERS=${HTTP_WORKERS:-0} PG_POOL_SIZE=${PG_POOL_SIZE:-32}
  JWT_SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export JWT_SECRET
}

# Starts the gateway; sets STARTED_IN to the seconds from spawn to the first 200 of /healthz.
start_gateway() {
  local t0 _
  t0=$(now)
  "$BIN/redeem-gateway" serve >>"$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 6000); do
    if curl -fsS -o /dev/null "http://$HTTP_ADDR/healthz" 2>/dev/null; then
      STARTED_IN=$(printf '%.2f' "$(echo "$(now) - $t0" | bc -l)")
      return
    fi
    kill -0 "$GW_PID" 2>/dev/null || die "gateway exited: $(tail -n 20 "$WORK/gateway.log")"
    sleep 0.02
  done
  die "gateway never answered /healthz"
}

stop_gateway() {
  kill "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
}

# utime+stime clock ticks of the gateway, Redis and PostgreSQL (all its processes).
cpu_ticks() {
  local pids pg total=0 pid
  pg=$(head -n1 "$STATE_DIR/pg/postmaster.pid")
  pids="$GW_PID $(cat "$STATE_DIR/redis/redis.pid") $pg $(pgrep -P "$pg" | tr '\n' ' ')"
  for pid in $pids; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
  done
  echo "$total"
}

# Reconciler pass durations (ms) logged since line $1 of the gateway log: "n mean max".
pass_times() {
  tail -n +"$1" "$WORK/gateway.log" | grep 'reconciler run' | grep -o '"duration_ms":[0-9]*' | cut -d: -f2 \
    | awk '{n++; s+=$1; if ($1>m) m=$1} END {if (n) printf "%d %.0f %d\n", n, s/n, m; else print "0 0 0"}'
}

bulk_codes() {
  local left=$1 n token
  token=$("$BIN/redeem-gateway" token --user scale_admin --admin 2>/dev/null)
  while [ "$left" -gt 0 ]; do
    n=$(( left < MAX_BULK ? left : MAX_BULK ))
    curl -fsS -o /dev/null -X POST "http://$HTTP_ADDR/admin/codes/bulk" -H "authorization: Bearer $token" \
      -H 'content-type: application/json' -d "{\"prefix\":\"SCALE\",\"count\":$n,\"amount\":1000}" \
      || die "bulk creation failed"
    left=$(( left - n ))
  done
}

# Seconds until an unused code answers 200 (503 while its state is rebuilt on demand): "secs tries".
first_redemption() {
  local code token t0 tries=0 status
  code=$(psql_bench -c "SELECT code FROM codes WHERE batch IS NOT NULL ORDER BY id DESC LIMIT 1")
  token=$("$BIN/redeem-gateway" token --user scale_probe 2>/dev/null)
  t0=$(now)
  while :; do
    tries=$(( tries + 1 ))
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$HTTP_ADDR/codes/use" \
      -H "authorization: Bearer $token" -H 'content-type: application/json' -d "{\"code\":\"$code\"}")
    [ "$status" = 200 ] && break
    [ "$status" = 503 ] || die "redeeming $code answered $status"
    [ "$tries" -lt 1000 ] || die "$code never came back"
    sleep 0.05
  done
  printf '%.2f %d\n' "$(echo "$(now) - $t0" | bc -l)" "$tries"
}

# loadgen's summary line of a scenario: requests/s and 200/s and p99.
loadgen_run() {
  local scenario=$1
  "$BIN/loadgen" "$scenario" --gateway "$HTTP_ADDR" --gateway-pid "$GW_PID" --connections "$CONNECTIONS" \
    --users "$LG_USERS" --limit "$LIMIT" --duration "$DURATION" >"$WORK/$scenario.out" 2>"$WORK/$scenario.err" \
    || die "loadgen $scenario failed: $(tail -n 20 "$WORK/$scenario.err")"
  grep "loadgen: $scenario: " "$WORK/$scenario.err" | tail -n1
}

# Redis bytes per redeemed slot of the burst's code (claims, owners, pending, free).
bytes_per_slot() {
  local code redeemed bytes=0 part b
  read -r code redeemed <<<"$(psql_bench -F ' ' -c "SELECT c.code, count(r.*) FROM codes c JOIN redemptions r ON r.code_id = c.id
      WHERE c.batch IS NULL GROUP BY c.id ORDER BY count(r.*) DESC LIMIT 1")"
  for part in claims owners pending free; do
    b=$(rcli MEMORY USAGE "$PREFIX:code:{$code}:$part" SAMPLES 0)
    bytes=$(( bytes + ${b:-0} ))
  done
  printf '%.1f %d\n' "$(echo "$bytes / $redeemed" | bc -l)" "$redeemed"
}

# One case: $1 name, $2 codes, $3 users. Writes "$WORK/$1.env" (key=value).
run_case() {
  local name=$1 codes=$2 users=$3 r="$WORK/$1.env" t0 line c0 c1 ticks
  log "== $name: $codes active bulk codes, $users users"
  fresh_database
  : >"$WORK/gateway.log"
  "$BIN/redeem-gateway" migrate >/dev/null
  t0=$(now)
  psql_bench -c "INSERT INTO users (username, password_hash) SELECT 'scale_' || g, '!' FROM generate_series(1, $users) g" >/dev/null
  log "$users users inserted in $(printf '%.1f' "$(echo "$(now) - $t0" | bc -l)") s"
  start_gateway
  t0=$(now)
  bulk_codes "$codes"
  log "$codes codes created in $(printf '%.1f' "$(echo "$(now) - $t0" | bc -l)") s"
  psql_bench -c "VACUUM ANALYZE" >/dev/null
  {
    echo "codes=$codes"; echo "users=$users"
    echo "active=$(psql_bench -c "SELECT count(*) FROM codes WHERE status = 'active'")"
  } >"$r"

  log "idle for ${IDLE}s: CPU and reconciler passes"
  sleep "$INTERVAL"
  line=$(( $(wc -l <"$WORK/gateway.log") + 1 ))
  c0=$(cpu_ticks); t0=$(now)
  sleep "$IDLE"
  c1=$(cpu_ticks)
  ticks=$(getconf CLK_TCK)
  echo "idle_cores=$(echo "($c1 - $c0) / $ticks / ($(now) - $t0)" | bc -l | xargs printf '%.3f')" >>"$r"
  read -r n mean max <<<"$(pass_times "$line")"
  echo "passes=$n" >>"$r"; echo "pass_mean_ms=$mean" >>"$r"; echo "pass_max_ms=$max" >>"$r"
  echo "pass_stats=$(tail -n +"$line" "$WORK/gateway.log" | grep 'reconciler run' | tail -n1 \
    | grep -o '"codes_checked":[0-9]*\|"codes_worked":[0-9]*\|"codes_swept":[0-9]*' | tr -d '"' | tr '\n' ' ')" >>"$r"

  log "restart"
  stop_gateway
  start_gateway
  echo "restart_healthz_s=$STARTED_IN" >>"$r"

  log "flood and burst (loadgen)"
  line=$(loadgen_run flood)
  echo "flood_rps=$(grep -o '[0-9]* req/s' <<<"$line" | cut -d' ' -f1)" >>"$r"
  line=$(loadgen_run burst)
  echo "burst_ok_per_s=$(grep -o '[0-9]* 200/s' <<<"$line" | cut -d' ' -f1)" >>"$r"
  echo "burst_p99=$(grep -o 'p99 [^,]*' <<<"$line" | cut -d' ' -f2)" >>"$r"
  read -r per_slot redeemed <<<"$(bytes_per_slot)"
  echo "bytes_per_slot=$per_slot" >>"$r"; echo "slots_measured=$redeemed" >>"$r"

  log "restart with the Redis keys deleted (as FLUSHALL)"
  stop_gateway
  wipe_prefix
  start_gateway
  echo "flushed_restart_healthz_s=$STARTED_IN" >>"$r"
  read -r secs tries <<<"$(first_redemption)"
  echo "on_demand_s=$secs" >>"$r"; echo "on_demand_tries=$tries" >>"$r"
  line=$(( $(wc -l <"$WORK/gateway.log") + 1 ))
  sleep $(( INTERVAL * 3 ))
  read -r n mean max <<<"$(pass_times "$line")"
  echo "recovery_pass_mean_ms=$mean" >>"$r"; echo "recovery_pass_max_ms=$max" >>"$r"
  stop_gateway
  cat "$r" >&2
}

val() { grep "^$2=" "$WORK/$1.env" | cut -d= -f2-; }
ratio() {
  local a b
  a=$(val small "$1"); b=$(val large "$1")
  if [ -n "$a" ] && [ -n "$b" ] && [ "$(echo "$a > 0" | bc -l)" = 1 ]; then
    printf '%.2f' "$(echo "$b / $a" | bc -l)"
  else
    echo "-"
  fi
}

report() {
  local load_before=$1 load_after=$2
  mkdir -p "$(dirname "$OUT")"
  {
    echo "# Flat cost at scale (make bench-scale)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src lua migrations || echo '+dirty'),"
    echo "$(nproc) cores, everything on one machine. Load average (1/5/15 min) before: $load_before; after: $load_after"
    echo "(the machine is shared: other processes compete for the same cores)."
    echo
    echo "Small case: $(val small codes) bulk codes, $(val small users) users. Large case: $(val large codes)"
    echo "bulk codes ($(val large active) active), $(val large users) users (SQL generate_series)."
    echo "RECONCILE_INTERVAL_SECONDS=$INTERVAL, RECONCILE_SWEEP_CODES=${RECONCILE_SWEEP_CODES:-1000} (default),"
    echo "loadgen: $CONNECTIONS connections, $LG_USERS users, burst limit $LIMIT, flood $DURATION s."
    echo
    echo "| measure | small | large | large / small |"
    echo "|---|---:|---:|---:|"
    echo "| reconciler pass, mean (ms) | $(val small pass_mean_ms) | $(val large pass_mean_ms) | $(ratio pass_mean_ms) |"
    echo "| reconciler pass, max (ms) | $(val small pass_max_ms) | $(val large pass_max_ms) | $(ratio pass_max_ms) |"
    echo "| passes in the idle window | $(val small passes) | $(val large passes) | |"
    echo "| idle CPU, gateway + Redis + PostgreSQL (cores, over ${IDLE} s) | $(val small idle_cores) | $(val large idle_cores) | $(ratio idle_cores) |"
    echo "| restart: first /healthz 200 (s) | $(val small restart_healthz_s) | $(val large restart_healthz_s) | $(ratio restart_healthz_s) |"
    echo "| restart after the Redis keys were deleted: first /healthz 200 (s) | $(val small flushed_restart_healthz_s) | $(val large flushed_restart_healthz_s) | $(ratio flushed_restart_healthz_s) |"
    echo "| then an unused code's first 200, on-demand rebuild (s / tries) | $(val small on_demand_s) / $(val small on_demand_tries) | $(val large on_demand_s) / $(val large on_demand_tries) | |"
    echo "| reconciler pass while the sweep rebuilds after that, mean / max (ms) | $(val small recovery_pass_mean_ms) / $(val small recovery_pass_max_ms) | $(val large recovery_pass_mean_ms) / $(val large recovery_pass_max_ms) | |"
    echo "| flood of a sold-out code (req/s) | $(val small flood_rps) | $(val large flood_rps) | $(ratio flood_rps) |"
    echo "| burst (credits/s) | $(val small burst_ok_per_s) | $(val large burst_ok_per_s) | $(ratio burst_ok_per_s) |"
    echo "| burst p99 | $(val small burst_p99) | $(val large burst_p99) | |"
    echo "| Redis bytes per redeemed slot (claims+owners+pending+free of the burst's code) | $(val small bytes_per_slot) | $(val large bytes_per_slot) | |"
    echo
    echo "Last idle pass: small: $(val small pass_stats); large: $(val large pass_stats)."
    echo
    echo "Reconciler pass time is its own log line (\`duration_ms\`, RUST_LOG=redeem_gateway::reconciler=debug);"
    echo "CPU is utime+stime from /proc of the gateway, redis-server and every PostgreSQL process of the"
    echo "bench's ports, idle (no requests) for ${IDLE} s after one interval; restart times run from spawning"
    echo "\`serve\` to the first 200 of /healthz, polled every 20 ms."
  } >"$OUT"
  cat "$OUT"
}

main() {
  command -v bc >/dev/null || die "bc not found (Debian: apt-get install bc)"
  command -v curl >/dev/null || die "curl not found"
  scripts/services.sh up
  PGPASSWORD=$(scripts/services.sh pg-password)
  export PGPASSWORD
  if [ "${SCALE_NO_BUILD:-0}" = 1 ]; then
    log "using the release binaries as built ($(stat -c %y "$BIN/redeem-gateway" | cut -d. -f1))"
  else
    log "building release binaries"
    cargo build --release --bins
  fi
  GW_PORT=$(free_port 18180)
  gateway_env
  local load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  run_case small 5 1000
  run_case large "$BIG_CODES" "$BIG_USERS"
  report "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  wipe_prefix
  log "report: $OUT"
}

main "$@"
