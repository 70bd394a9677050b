#!/usr/bin/env bash
# Project-local Redis and PostgreSQL for `make run`, `make test` and `make bench`.
# Installs the distribution's packages when they are missing, keeps data under
# .local/ (git-ignored) and listens on loopback at non-default ports so it never
# collides with a system service. Idempotent: `up` on running services is a no-op.
#
# PostgreSQL asks for a password over TCP (scram-sha-256), never `trust`: on a
# shared machine any local user could otherwise connect as the superuser and
# run commands as the postgres user (COPY ... TO PROGRAM). The password is
# generated once per data directory into .local/pg-password (0600); `env`
# prints URLs carrying it, and the tests read it from there. The local socket
# takes only the server's own OS user (peer), for this script's upkeep.
#
# A local Redis Cluster (3 masters + 3 replicas on loopback ports
# $REDIS_CLUSTER_PORT .. +5, data under .local/cluster/) for the cluster tests
# and `make bench-cluster`: cluster-up | cluster-down | cluster-env.
#
#   scripts/services.sh up | down | status | env | pg-password | dotenv | clean-tests
#                       | cluster-up | cluster-down | cluster-env
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SERVICES_DIR:-$ROOT/.local}
REDIS_PORT=${REDIS_PORT:-6479}
PG_PORT=${PG_PORT:-5479}
PG_DB=${PG_DB:-redeem_gateway}
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-300}
PG_PASSWORD_FILE="$STATE/pg-password"
REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-7479}

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* from the distribution's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

ensure_packages() {
  local want=()
  command -v redis-server >/dev/null || want+=(redis-server)
  command -v redis-cli >/dev/null || want+=(redis-tools)
  [ -n "$(pg_bin)" ] || want+=(postgresql)
  command -v psql >/dev/null || want+=(postgresql-client)
  # pgbench ships with postgresql-contrib on older releases and with the server on newer ones.
  if [ ${#want[@]} -gt 0 ]; then apt_install "${want[@]}"; fi
  # Debian's package starts a system-wide Redis on 6379; ours never touches it.
}

# PostgreSQL refuses to run as root: as root we run it as the `postgres` user,
# which needs to reach the data directory. A checkout under a private home
# directory is not reachable, so the data then lives in a private folder made
# with mktemp (random name, owned by postgres, 0700), recorded in
# $STATE/pg-dir so later runs find it; never a predictable path in /tmp.
pg_run() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

# The OS user the server runs as (the one peer authentication lets in).
pg_os_user() { if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi; }

pg_dir() {
  local d="$STATE/pg" recorded
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$STATE"
    if ! su postgres -s /bin/sh -c "test -x '$STATE'" 2>/dev/null; then
      recorded=$(cat "$STATE/pg-dir" 2>/dev/null || true)
      # Reuse the recorded folder only if it is still ours: a directory (not a
      # link) owned by postgres. Anything else may have been planted.
      if [ -n "$recorded" ] && [ -d "$recorded" ] && [ ! -L "$recorded" ] \
        && [ "$(stat -c %U "$recorded")" = postgres ] && [ ! -L "$(dirname "$recorded")" ]; then
        d="$recorded"
      else
        d="$(mktemp -d "${TMPDIR:-/tmp}/redeem-gateway-pg.XXXXXXXX")/pg"
        chown postgres "$(dirname "$d")"
        chmod 700 "$(dirname "$d")"
        echo "$d" >"$STATE/pg-dir"
      fi
    fi
  fi
  echo "$d"
}

# The server's socket folder: its own (postgres writes there), never the
# checkout's .local itself, which holds the password file.
pg_sock() {
  local data="$1" d
  if [ "$data" = "$STATE/pg" ]; then d="$STATE/pg-socket"; else d=$(dirname "$data"); fi
  mkdir -p "$d"
  if [ "$(id -u)" = 0 ]; then chown postgres "$d"; fi
  chmod 700 "$d"
  echo "$d"
}

# The password, made on first use (hex: safe in a URL as it is).
pg_password() {
  if [ ! -s "$PG_PASSWORD_FILE" ]; then
    mkdir -p "$STATE"
    (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$PG_PASSWORD_FILE")
  fi
  chmod 600 "$PG_PASSWORD_FILE"
  cat "$PG_PASSWORD_FILE"
}

# Our authentication rules, written before every start (and reloaded when a
# running server still has others, e.g. `trust` from an older checkout).
pg_write_hba() {
  local data="$1" hba
  hba="# Written by scripts/services.sh: loopback only, a password over TCP,
# the server's own OS user on the local socket. Never trust.
local   all  all                 peer map=owner
host    all  all  127.0.0.1/32   scram-sha-256
host    all  all  ::1/128        scram-sha-256"
  if [ "$(cat "$data/pg_hba.conf" 2>/dev/null)" = "$hba" ]; then return 1; fi
  pg_run "cat >'$data/pg_hba.conf'" <<<"$hba"
  pg_run "cat >'$data/pg_ident.conf'" <<<"owner  $(pg_os_user)  postgres"
  return 0
}

pg_url() { echo "postgres://postgres:$(pg_password)@127.0.0.1:$PG_PORT/${1:-$PG_DB}"; }

redis_up() {
  mkdir -p "$STATE/redis"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$STATE/redis" --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log" \
    --appendonly yes --appendfsync everysec --save "" --maxclients 10000
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && { log "redis up on 127.0.0.1:$REDIS_PORT"; return; }; sleep 0.1; done
  die "redis did not start; see $STATE/redis/redis.log"
}

cluster_ports() { seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)); }

cluster_nodes() {
  local p out=()
  for p in $(cluster_ports); do out+=("redis://127.0.0.1:$p"); done
  (IFS=,; echo "${out[*]}")
}

cluster_ok() {
  local p
  for p in $(cluster_ports); do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

# Six redis-servers in cluster mode, then `redis-cli --cluster create` pairs
# each of 3 masters with a replica. A node that misses its peers for
# cluster-node-timeout (2 s) is failed over, so a failover takes seconds.
cluster_up() {
  local p d hosts=()
  for p in $(cluster_ports); do
    d="$STATE/cluster/$p"; mkdir -p "$d"
    hosts+=("127.0.0.1:$p")
    redis-cli -p "$p" ping >/dev/null 2>&1 && continue
    redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --dir "$d" \
      --pidfile "$d/redis.pid" --logfile "$d/redis.log" --cluster-enabled yes \
      --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 \
      --appendonly yes --appendfsync everysec --save "" --maxclients 10000
  done
  for p in $(cluster_ports); do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$p" ping >/dev/null 2>&1 || die "cluster node $p did not start; see $STATE/cluster/$p/redis.log"
  done
  if ! redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | grep -q '^cluster_slots_assigned:16384'; then
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >"$STATE/cluster/create.log" 2>&1 \
      || die "redis-cli --cluster create failed; see $STATE/cluster/create.log"
  fi
  # Ready once every node says ok and each master has its replica.
  for _ in $(seq 100); do
    cluster_ok && [ "$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster nodes | grep -c slave)" = 3 ] && { log "redis cluster up on 127.0.0.1:$REDIS_CLUSTER_PORT..$((REDIS_CLUSTER_PORT + 5))"; return; }
    sleep 0.2
  done
  die "redis cluster not ok after 20 s; see $STATE/cluster/*/redis.log"
}

# Stops the nodes and forgets the cluster (it is a scratch cluster: tests and benches).
cluster_down() {
  local p
  for p in $(cluster_ports); do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$STATE/cluster"
  log "redis cluster stopped"
}

# Deletes keys matching $1 on every master of the local cluster (keys live
# per master: a SCAN sees one node's keyspace only).
cluster_del() {
  local p
  for p in $(cluster_ports); do
    redis-cli -p "$p" role 2>/dev/null | head -n 1 | grep -q master || continue
    redis-cli -p "$p" --scan --pattern "$1" | xargs -r -n 1 redis-cli -p "$p" del >/dev/null
  done
}

pg_up() {
  local bin data sock pw
  bin=$(pg_bin) || die "PostgreSQL server binaries not found"
  pw=$(pg_password)
  data=$(pg_dir); sock=$(pg_sock "$data")
  # A server already answering on the port (ours, from another checkout) is reused.
  if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then chown postgres "$data"; fi
    chmod 700 "$data"
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initialising PostgreSQL in $data"
      # No password yet and no rule that lets anyone in over TCP; ours follow.
      pg_run "'$bin/initdb' -D '$data' --auth-local=peer --auth-host=reject -U postgres --no-sync >/dev/null"
    fi
    pg_write_hba "$data" || true
    pg_run "'$bin/pg_ctl' -D '$data' -l '$data/postgres.log' -w -t 60 start -o \"-p $PG_PORT -k '$sock' -c listen_addresses=127.0.0.1 -c max_connections=$PG_MAX_CONNECTIONS -c password_encryption=scram-sha-256\"" >/dev/null \
      || die "PostgreSQL did not start; see $data/postgres.log"
    log "postgres up on 127.0.0.1:$PG_PORT"
  elif [ -f "$data/PG_VERSION" ] && pg_write_hba "$data"; then
    # Ours, running with older rules (trust, until the reload below): set the
    # password over TCP first, then load the new rules.
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
      <<<"SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '$pw';" >/dev/null \
      || die "could not set the postgres password on the running server"
    pg_run "'$bin/pg_ctl' -D '$data' reload" >/dev/null
    log "postgres on 127.0.0.1:$PG_PORT now takes a password (was trust)"
  fi
  # The password in the file is the server's (set it over the socket if not).
  if ! PGPASSWORD=$pw psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtc 'select 1' >/dev/null 2>&1; then
    [ -f "$data/PG_VERSION" ] || die "PostgreSQL on port $PG_PORT is not ours and refuses the password in $PG_PASSWORD_FILE"
    pg_run "psql -h '$sock' -p $PG_PORT -U postgres -d postgres -qAt -v ON_ERROR_STOP=1" \
      <<<"SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '$pw';" >/dev/null \
      || die "could not set the postgres password over the local socket"
  fi
  if ! pg_psql "select 1 from pg_database where datname='$PG_DB'" | grep -q 1; then
    pg_psql "create database $PG_DB" >/dev/null
  fi
  dotenv_upgrade
}

# psql as the superuser over loopback TCP, with the password.
pg_psql() { PGPASSWORD=$(pg_password) psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qtAc "$1"; }

# A .env made from an older .env.example points at the password-less URL of
# this server: give it the password, so `make run` keeps working.
dotenv_upgrade() {
  local f="$ROOT/.env" old="postgres://postgres@127.0.0.1:$PG_PORT/"
  if [ -f "$f" ] && grep -q "^DATABASE_URL=$old" "$f"; then
    sed -i "s|^DATABASE_URL=$old|DATABASE_URL=postgres://postgres:$(pg_password)@127.0.0.1:$PG_PORT/|" "$f"
    chmod 600 "$f"
    log "gave DATABASE_URL in .env the local password"
  fi
}

# .env from .env.example, with this checkout's database password and a fresh
# random JWT secret filled in (0600: it holds both).
dotenv() {
  local f="$ROOT/.env" tmp
  [ -f "$f" ] && { log ".env exists; leaving it"; return; }
  tmp=$(mktemp "$ROOT/.env.XXXXXX")
  chmod 600 "$tmp"
  sed -e "s|^DATABASE_URL=postgres://postgres@127.0.0.1:5479/|DATABASE_URL=postgres://postgres:$(pg_password)@127.0.0.1:$PG_PORT/|" \
      -e "s|^REDIS_URL=redis://127.0.0.1:6479/|REDIS_URL=redis://127.0.0.1:$REDIS_PORT/|" \
      -e "s|^JWT_SECRET=$|JWT_SECRET=$(od -An -N48 -tx1 /dev/urandom | tr -d ' \n')|" \
      "$ROOT/.env.example" >"$tmp"
  mv "$tmp" "$f"
  log "wrote .env (database password and a random JWT secret filled in)"
}

down() {
  local bin data
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  if [ -d "$STATE/cluster" ]; then cluster_down; fi
  bin=$(pg_bin || true); data=$(pg_dir)
  if [ -n "$bin" ] && [ -f "$data/PG_VERSION" ]; then
    pg_run "'$bin/pg_ctl' -D '$data' -m fast -w stop" >/dev/null 2>&1 || true
  fi
  log "stopped"
}

case "${1:-}" in
  up) ensure_packages; redis_up; pg_up ;;
  down) down ;;
  status)
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | sed "s/^/redis $REDIS_PORT: /" || echo "redis $REDIS_PORT: down"
    pg_isready -h 127.0.0.1 -p "$PG_PORT" || true ;;
  env)
    echo "DATABASE_URL=$(pg_url)"
    echo "TEST_DATABASE_URL=$(pg_url postgres)"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/" ;;
  pg-password) pg_password ;;
  # The split's wallet database (scripts/split.sh): created if missing, its URL printed.
  wallet-db)
    db=${PG_DB}_wallet
    pg_psql "select 1 from pg_database where datname='$db'" | grep -q 1 || pg_psql "create database $db" >/dev/null
    pg_url "$db" ;;
  dotenv) dotenv ;;
  clean-tests)
    # Databases and Redis keys left by earlier integration-test runs.
    for db in $(pg_psql "select datname from pg_database where datname like 'test\_%'"); do
      pg_psql "drop database if exists $db" >/dev/null
    done
    redis-cli -p "$REDIS_PORT" --scan --pattern 't_*' | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null
    if cluster_ok; then cluster_del 't_*'; fi ;;
  pg-stop) data=$(pg_dir); pg_run "'$(pg_bin)/pg_ctl' -D '$data' -m fast -w stop" >/dev/null ;;
  pg-start) pg_up ;;
  cluster-up) ensure_packages; cluster_up ;;
  cluster-down) cluster_down ;;
  cluster-env)
    echo "REDIS_CLUSTER_NODES=$(cluster_nodes)"
    echo "TEST_REDIS_CLUSTER_NODES=$(cluster_nodes)" ;;
  *) echo "usage: $0 up|down|status|env|pg-password|wallet-db|dotenv|clean-tests|pg-stop|pg-start|cluster-up|cluster-down|cluster-env" >&2; exit 2 ;;
esac
