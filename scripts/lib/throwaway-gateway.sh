# Sourced by scripts/fuzz.sh and scripts/client-check.sh: a throwaway gateway
# on a free loopback port, against a fresh database ($DB) on the project-local
# PostgreSQL and a fresh Redis key prefix ($PREFIX), dropped on exit.
# The caller sets ROOT, BIN, PG_PORT, REDIS_PORT, DB, PREFIX, OUT and die(),
# and exports PGPASSWORD before prepare_gateway.

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

psql_admin() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtAc "$1"; }

GATEWAY_PID=
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill "$GATEWAY_PID" 2>/dev/null && wait "$GATEWAY_PID" 2>/dev/null || true; fi
  psql_admin "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null || true
}
trap cleanup EXIT

# Exports the gateway's configuration ($PORT: a free port; a random JWT
# secret) and creates and migrates its database, so the CLI can mint tokens.
prepare_gateway() {
  PORT=$(free_port)
  export APP_ENV=dev HTTP_ADDR=127.0.0.1:$PORT HTTP_WORKERS=2 LOG_FORMAT=text RUST_LOG=${RUST_LOG:-warn}
  export DATABASE_URL=postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$DB REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
  export METRICS_ADDR=off REDIS_KEY_PREFIX=$PREFIX JWT_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  # A previous secret from .env must not outlive this run's random one.
  export JWT_PREVIOUS_SECRET= JWT_KID= TRUSTED_PROXY_HEADER=
  psql_admin "CREATE DATABASE $DB" >/dev/null
  "$BIN" migrate >/dev/null
}

# Serves in the background ($GATEWAY_PID, log in $OUT/gateway.log) and waits for /readyz.
serve_gateway() {
  "$BIN" serve >"$OUT/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then return; fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || { tail -20 "$OUT/gateway.log" >&2; die "the gateway exited"; }
    sleep 0.2
  done
  die "the gateway did not become ready on port $PORT"
}
