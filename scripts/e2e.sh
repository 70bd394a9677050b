#!/usr/bin/env bash
# End-to-end test of the live dashboard in headless Chromium (Debian's
# package, driven by playwright-core from npm: no browser download).
# Starts its own gateway on a free port against a fresh database and key
# prefix, creates a code, runs a burst, and checks the page's counter reaches
# the limit. Leaves a screenshot in e2e/artifacts/dashboard.png.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PG_PORT=${PG_PORT:-5479}
REDIS_PORT=${REDIS_PORT:-6479}
LIMIT=${E2E_LIMIT:-20}
USERS=${E2E_USERS:-60}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium >/dev/null; then
  echo "[e2e] installing Debian's chromium" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null || { echo "[e2e] node is required" >&2; exit 1; }
(cd e2e && npm ci --no-audit --no-fund --silent)

scripts/services.sh up
# The local PostgreSQL takes a password (see scripts/services.sh); psql reads it from here.
export PGPASSWORD
PGPASSWORD=$(scripts/services.sh pg-password)
cargo build -q --bin redeem-gateway
BIN="$ROOT/target/debug/redeem-gateway"

TAG=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
DB="e2e_$TAG"
psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "create database $DB"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
export APP_ENV=dev HTTP_ADDR="127.0.0.1:$PORT" HTTP_WORKERS=2 \
  DATABASE_URL="postgres://postgres:$PGPASSWORD@127.0.0.1:$PG_PORT/$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" \
  METRICS_ADDR=off \
  REDIS_KEY_PREFIX="e2e_$TAG" JWT_SECRET="e2e-secret-0123456789abcdef0123456789" RUST_LOG=warn

cleanup() {
  # GW_PID is the gateway itself (exec below), so this stops it, not a subshell.
  if [ -n "${GW_PID:-}" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# exec: $! must be the gateway's pid, not a subshell's, or cleanup leaves it running.
(cd "$WORK" && exec "$BIN" serve >"$WORK/gateway.log" 2>&1) & GW_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$WORK/gateway.log"; exit 1; }

(cd "$WORK" && "$BIN" create-code --code LIVE-DEMO --amount 50000 --limit "$LIMIT" >/dev/null)
ADMIN_TOKEN=$(cd "$WORK" && "$BIN" token --user e2e_admin --admin 2>/dev/null)
for i in $(seq "$USERS"); do (cd "$WORK" && "$BIN" token --user "e2e_u$i" 2>/dev/null); done >"$WORK/tokens"

mkdir -p e2e/artifacts
BASE_URL="http://127.0.0.1:$PORT" ADMIN_TOKEN="$ADMIN_TOKEN" CODE=LIVE-DEMO LIMIT="$LIMIT" \
  USER_TOKENS="$WORK/tokens" SCREENSHOT="$ROOT/e2e/artifacts/dashboard.png" \
  node e2e/dashboard.test.mjs
