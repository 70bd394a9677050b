#!/usr/bin/env bash
# `make bench`: the benchmark, from scratch, in one run. Starts the project's
# Redis and PostgreSQL, builds the release binaries, starts the gateway and
# the HTTP ceiling server on free loopback ports against a dedicated database
# and Redis key prefix (never the dev data), measures the Redis ceiling
# (redis-benchmark running lua/claim.lua) and the Postgres ceiling (pgbench
# running the gateway's COMMIT_SQL, its group commit statement and its balance
# query), wrk's flood against the gateway and the trivial server, runs every
# loadgen scenario and writes
# the markdown report to bench/results/latest.md. Exits non-zero if an
# invariant breaks after a burst.
#
# Knobs (environment): BENCH_USERS (20000), BENCH_LIMIT (1000), BENCH_DURATION
# seconds (10), BENCH_CONNECTIONS (256), PG_POOL_SIZE (32), HTTP_WORKERS (0 =
# one per CPU), PGBENCH_TX per client (2000), REDIS_BENCH_REQUESTS (200000),
# REDIS_BENCH_CLIENTS (64), BENCH_OUT (bench/results/latest.md), WRK_THREADS (2),
# WRK_CONNECTIONS (64), COMMIT_BATCH_COMMITTERS / COMMIT_BATCH_MAX_ROWS (as the gateway's),
# BENCH_SKIP_BUILD=1 (use the release binaries as they are).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
PG_PORT=${PG_PORT:-5479}
REDIS_PORT=${REDIS_PORT:-6479}
BENCH_DB=redeem_gateway_bench
PREFIX=bench
USERS=${BENCH_USERS:-20000}
LIMIT=${BENCH_LIMIT:-1000}
DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-256}
POOL=${PG_POOL_SIZE:-32}
WORKERS=${HTTP_WORKERS:-0}
PGBENCH_TX=${PGBENCH_TX:-2000}
REDIS_N=${REDIS_BENCH_REQUESTS:-200000}
REDIS_C=${REDIS_BENCH_CLIENTS:-64}
OUT=${BENCH_OUT:-bench/results/latest.md}
COMMITTERS=${COMMIT_BATCH_COMMITTERS:-4}
BATCH_ROWS=${COMMIT_BATCH_MAX_ROWS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
WORK=$(mktemp -d /tmp/redeem-bench.XXXXXX)

BENCH_TAG=bench
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
track_pids_and_work

ensure_tools() {
  command -v pgbench >/dev/null || [ -x "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)/pgbench" ] \
    || die "pgbench not found (Debian: apt-get install postgresql-contrib)"
  command -v redis-benchmark >/dev/null || die "redis-benchmark not found (Debian: apt-get install redis-tools)"
  command -v curl >/dev/null || die "curl not found"
  if ! command -v wrk >/dev/null; then
    log "installing wrk (Debian's package)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null; else sudo -n apt-get install -y wrk >/dev/null; fi \
      || die "wrk not found and could not be installed (Debian: apt-get install wrk)"
  fi
}

pgbench_bin() {
  command -v pgbench || echo "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)/pgbench"
}

fresh_database() {
  log "fresh database $BENCH_DB and Redis prefix $PREFIX"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $BENCH_DB" >/dev/null
  rcli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" del >/dev/null
}

start_gateway() {
  GW_PORT=$(free_port 18080)
  export APP_ENV=dev LOG_FORMAT=text RUST_LOG=warn
  # All load comes from one address here, so per-address abuse limits would
  # refuse it: BENCH_RATE_LIMITS=true measures their cost anyway.
  export RATE_LIMIT_ENABLED=${BENCH_RATE_LIMITS:-false} RATE_LOGIN_PER_ADDRESS_PER_MINUTE=1000000 \
    RATE_REGISTER_PER_HOUR=1000000 RATE_FAILED_CODE_PER_ADDRESS_PER_HOUR=1000000 RATE_CODE_PER_MINUTE=1000000
  export DATABASE_URL="postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$BENCH_DB" METRICS_ADDR=off
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" REDIS_KEY_PREFIX=$PREFIX
  export JWT_SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export HTTP_ADDR="127.0.0.1:$GW_PORT" HTTP_WORKERS=$WORKERS PG_POOL_SIZE=$POOL
  "$BIN/redeem-gateway" serve >"$WORK/gateway.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_ready "http://$HTTP_ADDR/readyz"
  log "gateway pid $GW_PID on $HTTP_ADDR"
}

start_ceiling() {
  CEIL_PORT=$(free_port $(( GW_PORT + 1 )))
  "$BIN/loadgen" ceiling-server --addr "127.0.0.1:$CEIL_PORT" >"$WORK/ceiling.log" 2>&1 &
  CEIL_PID=$!; PIDS+=("$CEIL_PID")
  local _
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$CEIL_PORT") 2>/dev/null && break; sleep 0.1; done
  log "ceiling server pid $CEIL_PID on 127.0.0.1:$CEIL_PORT"
}

# redis-benchmark: EVALSHA of lua/claim.lua on the 7 keys of a code with a huge limit (KEYS as at the top of the script).
redis_ceiling() {
  local sha base
  sha=$(rcli SCRIPT LOAD "$(cat lua/claim.lua)")
  base="$PREFIX:code:{REDISBENCH}"
  rcli DEL "$base:meta" "$base:claims" "$base:pending" "$base:free" "$base:stats" "$base:dropped" "$base:owners" >/dev/null
  rcli HSET "$base:meta" limit 10000000 next 0 >/dev/null
  log "redis ceiling: $REDIS_N x EVALSHA claim.lua, $REDIS_C clients"
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$REDIS_C" -n "$REDIS_N" -r 100000000 --csv \
    EVALSHA "$sha" 7 "$base:meta" "$base:claims" "$base:pending" "$base:free" "$base:stats" "$base:dropped" "$base:owners" __rand_int__ 30000 \
    >"$WORK/redis.csv"
  REDIS_RPS=$(awk -F'"' 'NR==2 {print $4}' "$WORK/redis.csv")
  [ -n "$REDIS_RPS" ] || die "could not read redis-benchmark's result: $(cat "$WORK/redis.csv")"
  rcli DEL "$base:meta" "$base:claims" "$base:pending" "$base:free" "$base:stats" "$base:dropped" "$base:owners" >/dev/null
  log "redis ceiling: $REDIS_RPS claims/s"
}

# pgbench: the gateway's commit statement, PG_POOL_SIZE clients, fresh users and tickets.
pg_ceiling() {
  local users=$(( POOL * PGBENCH_TX )) code_id
  # first_user and last_user stay global: the batched and balance ceilings use the same users.
  log "postgres ceiling: preparing $users users and a code with a huge limit"
  code_id=$(psql_bench -c "INSERT INTO codes (code, amount, redemption_limit) VALUES ('PGBENCH', 1000, 10000000) RETURNING id" | head -n1)
  first_user=$(psql_bench -c "WITH u AS (INSERT INTO users (username, password_hash)
      SELECT 'pgb_' || g, '!' FROM generate_series(1, $users) g RETURNING id) SELECT min(id) || ' ' || max(id) FROM u" | head -n1)
  read -r first_user last_user <<<"$first_user"
  [ $(( last_user - first_user + 1 )) = "$users" ] || die "pgbench users are not consecutive ids"
  psql_bench -c "CREATE SEQUENCE lg_pgbench_n" >/dev/null
  "$BIN/loadgen" pgbench-script --code-id "$code_id" --first-user "$first_user" >"$WORK/commit.sql"
  log "postgres ceiling: pgbench -M prepared -c $POOL -j 2 -t $PGBENCH_TX"
  "$(pgbench_bin)" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$POOL" -j 2 -t "$PGBENCH_TX" \
    -f "$WORK/commit.sql" "$BENCH_DB" >"$WORK/pgbench.out" 2>&1 || die "pgbench failed: $(tail -n 20 "$WORK/pgbench.out")"
  PG_TPS=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.out")
  local failed
  failed=$(awk '/number of failed transactions/ {print $5}' "$WORK/pgbench.out")
  [ -n "$PG_TPS" ] || die "could not read pgbench's result: $(cat "$WORK/pgbench.out")"
  [ "${failed:-0}" = 0 ] || die "pgbench had failed transactions: $(cat "$WORK/pgbench.out")"
  log "postgres ceiling: $PG_TPS commits/s"
}

# pgbench: the group commit's statement (BATCH_ROWS rows each) on a second
# code, COMMIT_BATCH_COMMITTERS clients, the same users: what the batcher pays
# per credit in Postgres, and the measure of one FOR KEY SHARE per batch
# against one per row (the single-statement ceiling above).
pg_batch_ceiling() {
  local code_id statements per_client
  code_id=$(psql_bench -c "INSERT INTO codes (code, amount, redemption_limit) VALUES ('PGBENCH_BATCH', 1000, 10000000) RETURNING id" | head -n1)
  psql_bench -c "CREATE SEQUENCE lg_pgbench_batch_n" >/dev/null
  "$BIN/loadgen" pgbench-script --code-id "$code_id" --first-user "$first_user" --batch "$BATCH_ROWS" >"$WORK/batch.sql"
  statements=$(( (last_user - first_user + 1) / BATCH_ROWS ))
  per_client=$(( statements / COMMITTERS ))
  log "postgres batched: pgbench -M prepared -c $COMMITTERS -t $per_client, $BATCH_ROWS rows per statement"
  "$(pgbench_bin)" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$COMMITTERS" -j 2 -t "$per_client" \
    -f "$WORK/batch.sql" "$BENCH_DB" >"$WORK/pgbench-batch.out" 2>&1 || die "pgbench (batched) failed: $(tail -n 20 "$WORK/pgbench-batch.out")"
  local tps
  tps=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench-batch.out")
  [ -n "$tps" ] || die "could not read pgbench's result: $(cat "$WORK/pgbench-batch.out")"
  PG_BATCH_CPS=$(awk -v t="$tps" -v r="$BATCH_ROWS" 'BEGIN {printf "%.0f", t * r}')
  log "postgres batched: $tps statements/s = $PG_BATCH_CPS credits/s"
}

# pgbench: the gateway's balance query, PG_POOL_SIZE clients, random users.
pg_balance_ceiling() {
  "$BIN/loadgen" pgbench-script --first-user "$first_user" --last-user "$last_user" >"$WORK/balance.sql"
  log "postgres balance: pgbench -M prepared -c $POOL -j 2 -T $DURATION"
  "$(pgbench_bin)" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$POOL" -j 2 -T "$DURATION" \
    -f "$WORK/balance.sql" "$BENCH_DB" >"$WORK/pgbench-balance.out" 2>&1 || die "pgbench (balance) failed: $(tail -n 20 "$WORK/pgbench-balance.out")"
  PG_BALANCE_QPS=$(awk '/^tps = / {printf "%.0f", $3; exit}' "$WORK/pgbench-balance.out")
  [ -n "$PG_BALANCE_QPS" ] || die "could not read pgbench's result: $(cat "$WORK/pgbench-balance.out")"
  log "postgres balance: $PG_BALANCE_QPS queries/s"
}

# Schema cost: the same two pgbench ceilings on a scratch database whose
# credit path has the per-row checks V10 replaced (scripts/bench/row-checks.sql:
# the row trigger and the foreign keys), so the report shows both schemas
# measured in one run. The ceilings above (the schema in use) stay as they were.
schema_cost() {
  local db=${BENCH_DB}_rowchecks saved_db=$BENCH_DB saved_tps=$PG_TPS saved_batch=$PG_BATCH_CPS
  local saved_first=$first_user saved_last=$last_user
  log "schema cost: scratch database $db with the per-row checks"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db" >/dev/null
  DATABASE_URL="postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$db" "$BIN/redeem-gateway" migrate >"$WORK/migrate-rowchecks.log" 2>&1 \
    || die "could not migrate $db: $(tail -n 20 "$WORK/migrate-rowchecks.log")"
  BENCH_DB=$db
  psql_bench -f scripts/bench/row-checks.sql >/dev/null
  pg_ceiling
  pg_batch_ceiling
  ROWCHECK_TPS=$PG_TPS ROWCHECK_BATCH_CPS=$PG_BATCH_CPS
  BENCH_DB=$saved_db PG_TPS=$saved_tps PG_BATCH_CPS=$saved_batch first_user=$saved_first last_user=$saved_last
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  log "schema cost: per-row checks $ROWCHECK_TPS commits/s, $ROWCHECK_BATCH_CPS batched credits/s"
}

# wrk's requests/s from its output ("Requests/sec: N"); fails loudly on
# socket errors or answers other than the expected 410.
wrk_run() {
  local addr=$1 out=$2
  WRK_TOKENS="$WORK/tokens" WRK_CODE="$(cat "$WORK/code")" \
    wrk -t "$WRK_THREADS" -c "$WRK_CONNECTIONS" -d "${DURATION}s" -s scripts/wrk-use-code.lua "http://$addr" >"$out" 2>&1 \
    || die "wrk failed: $(cat "$out")"
  grep -q "^Socket errors" "$out" && die "wrk saw socket errors: $(cat "$out")"
  # Every answer is the sold-out 410: "Non-2xx" must count all the requests.
  local total non2xx
  total=$(awk '/requests in/ {print $1}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  [ -n "$total" ] && [ "$total" = "${non2xx:-0}" ] || die "wrk saw answers other than 410: $(cat "$out")"
  awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out"
}

# The flood by an outside generator: wrk on the sold-out code, the gateway
# then the trivial server, with the same script and tokens.
wrk_flood() {
  "$BIN/loadgen" wrk-fixtures --users "$USERS" --dir "$WORK" --gateway "$HTTP_ADDR"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $(head -n1 "$WORK/tokens")" \
    -H 'Content-Type: application/json' -d "{\"code\":\"$(cat "$WORK/code")\"}" "http://$HTTP_ADDR/codes/use")
  [ "$status" = 410 ] || die "the wrk flood's code answered $status, not 410"
  log "wrk flood: -t $WRK_THREADS -c $WRK_CONNECTIONS -d ${DURATION}s against the gateway"
  WRK_GATEWAY=$(wrk_run "$HTTP_ADDR" "$WORK/wrk-gateway.out")
  log "wrk flood: same against the trivial server"
  WRK_CEILING=$(wrk_run "127.0.0.1:$CEIL_PORT" "$WORK/wrk-ceiling.out")
  log "wrk flood: gateway $WRK_GATEWAY/s, trivial server $WRK_CEILING/s"
}

main() {
  ensure_tools
  scripts/services.sh up
  # The local PostgreSQL takes a password (see scripts/services.sh); psql and pgbench read it from here.
  PGPASSWORD=$(scripts/services.sh pg-password)
  export PGPASSWORD
  if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
    log "using the release binaries already built (BENCH_SKIP_BUILD=1)"
  else
    log "building release binaries"
    cargo build --release --bins
  fi
  fresh_database
  start_gateway
  start_ceiling
  redis_ceiling
  pg_ceiling
  pg_batch_ceiling
  pg_balance_ceiling
  schema_cost
  wrk_flood
  mkdir -p "$(dirname "$OUT")"
  local load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "running the scenarios (load average before: $load_before)"
  "$BIN/loadgen" all --gateway "$HTTP_ADDR" --gateway-pid "$GW_PID" --ceiling "127.0.0.1:$CEIL_PORT" \
    --connections "$CONNECTIONS" --users "$USERS" --limit "$LIMIT" --duration "$DURATION" \
    --redis-ceiling "$REDIS_RPS" --pg-ceiling "$PG_TPS" --pg-batch-ceiling "$PG_BATCH_CPS" \
    --pg-balance-ceiling "$PG_BALANCE_QPS" --wrk-flood "$WRK_GATEWAY" --wrk-ceiling "$WRK_CEILING" \
    --commit "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src lua migrations || echo '+dirty')" \
    --param "redis-benchmark=-c $REDIS_C -n $REDIS_N -r 100000000 EVALSHA claim.lua" \
    --param "pgbench=-M prepared -c $POOL -j 2 -t $PGBENCH_TX (COMMIT_SQL after a nextval for a fresh user/ticket)" \
    --param "pgbench batched=-M prepared -c $COMMITTERS -j 2, $BATCH_ROWS rows per statement (the group commit's statement)" \
    --param "schema cost=with V9's per-row checks (row trigger + foreign keys, scripts/bench/row-checks.sql) the same pgbench runs give COMMIT_SQL $ROWCHECK_TPS commits/s and the batched statement $ROWCHECK_BATCH_CPS credits/s, against $PG_TPS and $PG_BATCH_CPS with V10's statement checks (the ceilings below)" \
    --param "pgbench balance=-M prepared -c $POOL -j 2 -T $DURATION (the balance query, random users)" \
    --param "wrk=-t $WRK_THREADS -c $WRK_CONNECTIONS -d ${DURATION}s, Lua script rotating $USERS tokens on a sold-out code, gateway and trivial server alike" \
    --param "load generator=same machine, tokio 2 threads, hyper HTTP/1.1 keep-alive" \
    --param "gateway RUST_LOG=$RUST_LOG (4xx answers are not logged)" \
    --param "load average (1/5/15 min) before the scenarios=$load_before; other processes on the machine compete for the same 2 cores" \
    --out "$OUT"
  log "report: $OUT"
}

main "$@"
