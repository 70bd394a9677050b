#!/usr/bin/env bash
# `make bench-cluster`: what Redis Cluster buys, measured on this machine.
#
#  1. Many codes at once through the gateways: BENCH_CODES concurrent bursts
#     (loadgen burst, one code each, its own users), against one gateway on
#     one Redis, then against two gateways on the local cluster (3 masters +
#     3 replicas, scripts/services.sh cluster-up), the bursts split between them.
#  2. The gate's own ceiling (redis-benchmark running lua/claim.lua): one
#     Redis; one hot code on the cluster (its slot lives on one master, however
#     many there are); three codes at once, one per master.
#  3. One hot code through two gateways on the cluster.
#
# Writes bench/results/cluster.md with the machine's load average, since the
# machine may be shared. Exits non-zero if a burst breaks an invariant.
#
# Knobs: BENCH_CODES (4), BENCH_USERS per code (5000), BENCH_LIMIT per code
# (1000), BENCH_CONNECTIONS in all (256), BENCH_HOT_USERS (20000),
# BENCH_HOT_LIMIT (5000), REDIS_BENCH_REQUESTS (200000), REDIS_BENCH_CLIENTS
# (64), REDIS_CLUSTER_PORT (7479), BENCH_OUT (bench/results/cluster.md),
# BENCH_PROFILE (release).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# BENCH_PROFILE=debug measures the debug build (no release build at hand): for ratios only.
PROFILE=${BENCH_PROFILE:-release}
case "$PROFILE" in release) BIN=$CARGO_TARGET_DIR/release; BUILD=(--release) ;; debug) BIN=$CARGO_TARGET_DIR/debug; BUILD=() ;;
  *) echo "BENCH_PROFILE is release or debug" >&2; exit 2 ;; esac
export PG_PORT=${PG_PORT:-5479} REDIS_PORT=${REDIS_PORT:-6479} REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-7479}
BENCH_DB=redeem_gateway_bench_cluster
PREFIX=benchc
CODES=${BENCH_CODES:-4}
USERS=${BENCH_USERS:-5000}
LIMIT=${BENCH_LIMIT:-1000}
CONNECTIONS=${BENCH_CONNECTIONS:-256}
HOT_USERS=${BENCH_HOT_USERS:-20000}
HOT_LIMIT=${BENCH_HOT_LIMIT:-5000}
REDIS_N=${REDIS_BENCH_REQUESTS:-200000}
REDIS_C=${REDIS_BENCH_CLIENTS:-64}
OUT=${BENCH_OUT:-bench/results/cluster.md}
WORK=$(mktemp -d /tmp/redeem-bench-cluster.XXXXXX)

BENCH_TAG=bench-cluster
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
track_pids_and_work
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

cluster_nodes() { scripts/services.sh cluster-env | sed -n 's/^REDIS_CLUSTER_NODES=//p'; }

# The environment every gateway and loadgen of this bench shares.
common_env() {
  export APP_ENV=dev LOG_FORMAT=text RUST_LOG=warn METRICS_ADDR=off RATE_LIMIT_ENABLED=false
  export DATABASE_URL="postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$BENCH_DB"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" REDIS_KEY_PREFIX=$PREFIX
  export JWT_SECRET=$SECRET
}

# start_gateway single|cluster: appends host:port to GATEWAYS.
start_gateway() {
  local port nodes=""
  port=$(free_port $(( 18180 + ${#PIDS[@]} * 7 )))
  [ "$1" = cluster ] && nodes=$(cluster_nodes)
  REDIS_CLUSTER_NODES=$nodes HTTP_ADDR="127.0.0.1:$port" "$BIN/redeem-gateway" serve >"$WORK/gateway-$port.log" 2>&1 &
  PIDS+=("$!")
  wait_ready "http://127.0.0.1:$port/readyz"
  GATEWAYS+=("127.0.0.1:$port")
  log "gateway on 127.0.0.1:$port ($1 Redis)"
}

stop_gateways() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=(); GATEWAYS=()
}

# bursts NAME single|cluster N USERS LIMIT: N concurrent `loadgen burst`, one
# code each, spread over GATEWAYS; one table row with their sums.
bursts() {
  local name=$1 mode=$2 n=$3 users=$4 limit=$5 i nodes="" pids=() conns used
  conns=$(( CONNECTIONS / n )); [ "$conns" -ge 1 ] || conns=1
  # One burst drives one gateway: fewer bursts than gateways leave some idle.
  used=${#GATEWAYS[@]}; [ "$n" -lt "$used" ] && used=$n
  [ "$mode" = cluster ] && nodes=$(cluster_nodes)
  log "$name: $n burst(s) of $users users on limit $limit, $conns connections each, over ${GATEWAYS[*]}"
  local before; before=$(load_avg)
  for i in $(seq 0 $(( n - 1 ))); do
    REDIS_CLUSTER_NODES=$nodes "$BIN/loadgen" burst --gateway "${GATEWAYS[$(( i % ${#GATEWAYS[@]} ))]}" \
      --connections "$conns" --users "$users" --limit "$limit" >"$WORK/$name-$i.md" 2>"$WORK/$name-$i.err" &
    pids+=("$!")
  done
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "$name: a burst failed or broke an invariant: $(cat "$WORK/$name"-*.err | tail -n 20)"
  # loadgen: burst: R requests, X req/s, S x 200, Y 200/s, p99 <Duration>, statuses ...
  cat "$WORK/$name"-*.err | awk -v name="$name" -v gws="$used" -v mode="$mode" -v n="$n" -v load="$before" '
    /^loadgen: burst: / {
      req += $3; rps += $5; ok += $7; okps += $10
      p = $13; sub(/,$/, "", p); ms = p + 0
      if (p ~ /µs$/) ms = ms / 1000; else if (p ~ /ms$/) ms = ms; else if (p ~ /s$/) ms = ms * 1000
      if (ms > p99) p99 = ms
    }
    END { printf "| %s | %d x %s Redis | %d | %d | %.0f | %d | %.0f | %.0f | %s |\n", name, gws, mode, n, req, rps, ok, okps, p99, load }' >>"$WORK/rows.md"
  echo "$name, $n x loadgen burst on $used gateway(s), $mode Redis: invariants held (every loadgen exited 0)" >>"$WORK/invariants.txt"
}

# claim.lua's 7 keys for CODE.
claim_keys() {
  local b="$PREFIX:code:{$1}"
  echo "$b:meta $b:claims $b:pending $b:free $b:stats $b:dropped $b:owners"
}

# redis-benchmark of EVALSHA claim.lua on one code, at PORT; prints claims/s.
script_ceiling() {
  local port=$1 code=$2 sha keys
  keys=$(claim_keys "$code")
  sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat lua/claim.lua)")
  # shellcheck disable=SC2086
  redis-cli -p "$port" DEL $keys >/dev/null
  redis-cli -p "$port" HSET "$PREFIX:code:{$code}:meta" limit 100000000 next 0 >/dev/null
  # shellcheck disable=SC2086
  redis-benchmark -h 127.0.0.1 -p "$port" -c "$REDIS_C" -n "$REDIS_N" -r 100000000 --csv \
    EVALSHA "$sha" 7 $keys __rand_int__ 30000 | awk -F'"' 'NR==2 {print $4}'
  # shellcheck disable=SC2086
  redis-cli -p "$port" DEL $keys >/dev/null
}

# The master that serves CODE's slot on the local cluster.
master_of() {
  local slot
  slot=$(redis-cli -p "$REDIS_CLUSTER_PORT" CLUSTER KEYSLOT "{$1}")
  redis-cli -p "$REDIS_CLUSTER_PORT" CLUSTER NODES | awk -v s="$slot" '
    $3 ~ /master/ && $3 !~ /fail/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
      if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2]; exit } } }'
}

# Codes whose slots land on three different masters.
codes_per_master() {
  local i m seen=" " out=()
  for i in $(seq 1 200); do
    m=$(master_of "HOT$i")
    case "$seen" in *" $m "*) continue ;; esac
    seen="$seen$m "; out+=("HOT$i:$m")
    [ ${#out[@]} = 3 ] && break
  done
  echo "${out[@]}"
}

main() {
  command -v redis-benchmark >/dev/null || die "redis-benchmark not found (Debian: apt-get install redis-tools)"
  scripts/services.sh up
  scripts/services.sh cluster-up
  PGPASSWORD=$(scripts/services.sh pg-password); export PGPASSWORD
  SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  log "building $PROFILE binaries"
  cargo build "${BUILD[@]}" --bins
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $BENCH_DB" >/dev/null
  common_env
  local load_start; load_start=$(uptime)
  : >"$WORK/rows.md"; : >"$WORK/invariants.txt"
  GATEWAYS=()

  start_gateway single
  bursts "many codes" single "$CODES" "$USERS" "$LIMIT"
  bursts "one hot code" single 1 "$HOT_USERS" "$HOT_LIMIT"
  stop_gateways

  start_gateway cluster
  start_gateway cluster
  bursts "many codes" cluster "$CODES" "$USERS" "$LIMIT"
  bursts "one hot code" cluster 1 "$HOT_USERS" "$HOT_LIMIT"
  stop_gateways

  log "gate ceilings (redis-benchmark, EVALSHA claim.lua, $REDIS_C clients, $REDIS_N calls)"
  local single hot hot_master spread=() pairs total=0 code port r
  single=$(script_ceiling "$REDIS_PORT" SINGLEHOT)
  pairs=$(codes_per_master)
  local first=${pairs%% *}
  hot_master=${first#*:}
  hot=$(script_ceiling "$hot_master" "${first%%:*}")
  for p in $pairs; do
    code=${p%%:*}; port=${p#*:}
    script_ceiling "$port" "$code" >"$WORK/spread-$code" &
    spread+=("$!")
  done
  for pid in "${spread[@]}"; do wait "$pid"; done
  for p in $pairs; do r=$(cat "$WORK/spread-${p%%:*}"); total=$(awk -v a="$total" -v b="$r" 'BEGIN{print a+b}'); done

  mkdir -p "$(dirname "$OUT")"
  {
    echo "# Redis Cluster bench"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%MZ) at $(git rev-parse --short HEAD), $PROFILE build, on $(nproc) cores ($(uname -m)),"
    echo "by \`make bench-cluster\` (scripts/bench-cluster.sh). Everything (gateways, load"
    echo "generators, Redis nodes, PostgreSQL) shares this machine's cores."
    echo
    echo "- uptime at the start: \`$load_start\`"
    echo "- uptime at the end: \`$(uptime)\`"
    echo
    echo "## Through the gateways (loadgen burst: each user fires once, invariants checked)"
    echo
    echo "| scenario | gateways | bursts | requests | req/s (sum) | 200s | 200/s (sum) | worst p99 ms | load avg before |"
    echo "|---|---|---|---|---|---|---|---|---|"
    cat "$WORK/rows.md"
    echo
    echo "Many codes: $CODES bursts at once, $USERS users on limit $LIMIT each, $CONNECTIONS connections"
    echo "in all. One hot code: $HOT_USERS users on limit $HOT_LIMIT. Rates are summed over the"
    echo "concurrent bursts, each measured over its own run."
    echo
    echo "## The gate alone (redis-benchmark: EVALSHA lua/claim.lua, $REDIS_C clients, $REDIS_N calls each)"
    echo
    echo "| where | claims/s |"
    echo "|---|---|"
    echo "| one Redis, one code | $single |"
    echo "| cluster, one hot code (its slot's master, port $hot_master) | $hot |"
    echo "| cluster, three codes at once, one per master (sum) | $total |"
    echo
    echo "Invariant checks of every burst:"
    echo
    sed 's/^/    /' "$WORK/invariants.txt"
  } >"$OUT"
  log "report: $OUT"
  cat "$OUT"
}

main "$@"
