#!/usr/bin/env bash
# Project-local Redis and PostgreSQL for `make run`, `make test` and `make bench`.
# Installs the distribution's packages when they are missing, keeps data under
# .local/ (git-ignored) and listens on loopback at non-default ports so it never
# collides with a system service. Idempotent: `up` on running services is a no-op.
#
#   scripts/services.sh up | down | status | env | clean-tests
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SERVICES_DIR:-$ROOT/.local}
REDIS_PORT=${REDIS_PORT:-6479}
PG_PORT=${PG_PORT:-5479}
PG_DB=${PG_DB:-redeem_gateway}
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-300}

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
# directory is not reachable, so fall back to a folder under /tmp.
pg_run() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

pg_dir() {
  local d="$STATE/pg"
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$STATE"
    if ! su postgres -s /bin/sh -c "test -x '$STATE'" 2>/dev/null; then
      d="/tmp/redeem-gateway-$(echo "$ROOT" | md5sum | cut -c1-8)/pg"
    fi
  fi
  echo "$d"
}

redis_up() {
  mkdir -p "$STATE/redis"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$STATE/redis" --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log" \
    --appendonly yes --appendfsync everysec --save "" --maxclients 10000
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && { log "redis up on 127.0.0.1:$REDIS_PORT"; return; }; sleep 0.1; done
  die "redis did not start; see $STATE/redis/redis.log"
}

pg_up() {
  local bin data sock
  bin=$(pg_bin) || die "PostgreSQL server binaries not found"
  # A server already answering on the port (ours, from another checkout) is reused.
  if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    data=$(pg_dir); sock=$(dirname "$data")
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then chown postgres "$data" "$sock"; fi
    chmod 700 "$data"
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initialising PostgreSQL in $data"
      pg_run "'$bin/initdb' -D '$data' -A trust -U postgres --no-sync >/dev/null"
    fi
    pg_run "'$bin/pg_ctl' -D '$data' -l '$data/postgres.log' -w -t 60 start -o \"-p $PG_PORT -k '$sock' -c listen_addresses=127.0.0.1 -c max_connections=$PG_MAX_CONNECTIONS\"" >/dev/null \
      || die "PostgreSQL did not start; see $data/postgres.log"
    log "postgres up on 127.0.0.1:$PG_PORT"
  fi
  if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "select 1 from pg_database where datname='$PG_DB'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "create database $PG_DB" >/dev/null
  fi
}

down() {
  local bin data
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
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
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
    echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/" ;;
  clean-tests)
    # Databases and Redis keys left by earlier integration-test runs.
    for db in $(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "select datname from pg_database where datname like 'test\_%'"); do
      psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "drop database if exists $db" >/dev/null
    done
    redis-cli -p "$REDIS_PORT" --scan --pattern 't_*' | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null ;;
  pg-stop) data=$(pg_dir); pg_run "'$(pg_bin)/pg_ctl' -D '$data' -m fast -w stop" >/dev/null ;;
  pg-start) pg_up ;;
  *) echo "usage: $0 up|down|status|env|clean-tests|pg-stop|pg-start" >&2; exit 2 ;;
esac
