#!/usr/bin/env bash
# The contract, checked as a client developer would: generates a Python client
# from the running gateway's /openapi.json with openapi-python-client, checks
# the document with openapi-spec-validator, and runs a scenario through the
# client (scripts/client_scenario.py): register, log in, create a credit code
# and a coupon as admin, redeem, read the balance and the ledger, quote the
# coupon, redeem it as the checkout service, read the reports.
#
# Builds the debug binary (or uses CLIENT_CHECK_BIN), starts it on a free
# port against a fresh database on the project-local PostgreSQL and a fresh
# Redis key prefix, mints the admin and service tokens with the CLI, and
# cleans up. The tools live in the project-local virtualenv (.local/venv,
# git-ignored), installed from PyPI on first use.
#
# Exit status: 0 when the document is valid and the scenario passes, 1 when
# either fails (a spec that drifted from the server), 2 on a set-up error.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GENERATOR_VERSION=${OPENAPI_PYTHON_CLIENT_VERSION:-0.29.1}
VALIDATOR_VERSION=${OPENAPI_SPEC_VALIDATOR_VERSION:-0.9.0}
VENV=$ROOT/.local/venv
PG_PORT=${PG_PORT:-5479}
REDIS_PORT=${REDIS_PORT:-6479}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${CLIENT_CHECK_BIN:-$TARGET_DIR/debug/redeem-gateway}
RUN_ID=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
OUT=$ROOT/.local/client-check/$RUN_ID
DB=client_$RUN_ID
PREFIX=c_$RUN_ID

log() { printf '[client-check] %s\n' "$*" >&2; }
die() { printf '[client-check] ERROR: %s\n' "$*" >&2; exit 2; }
fail() { printf '[client-check] FAIL: %s\n' "$*" >&2; exit 1; }

ensure_tools() {
  if [ -x "$VENV/bin/openapi-python-client" ] && [ -x "$VENV/bin/openapi-spec-validator" ]; then return; fi
  log "installing openapi-python-client $GENERATOR_VERSION and openapi-spec-validator $VALIDATOR_VERSION into .local/venv"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "openapi-python-client==$GENERATOR_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"
}

# shellcheck source=scripts/lib/throwaway-gateway.sh
. "$ROOT/scripts/lib/throwaway-gateway.sh"

start_gateway() {
  prepare_gateway
  ADMIN_TOKEN=$("$BIN" token --user client_admin --admin 2>/dev/null)
  SERVICE_TOKEN=$("$BIN" token --service checkout --scope coupons:redeem 2>/dev/null)
  export ADMIN_TOKEN SERVICE_TOKEN
  serve_gateway
}

main() {
  mkdir -p "$OUT"
  ensure_tools
  "$ROOT/scripts/services.sh" up
  PGPASSWORD=$("$ROOT/scripts/services.sh" pg-password)
  export PGPASSWORD
  if [ -z "${CLIENT_CHECK_BIN:-}" ]; then
    log "building the gateway"
    cargo build --quiet --bin redeem-gateway
  fi
  start_gateway
  log "gateway on port $PORT (log: ${OUT#"$ROOT"/}/gateway.log)"

  curl -fsS "http://127.0.0.1:$PORT/openapi.json" -o "$OUT/openapi.json" || fail "GET /openapi.json"
  log "validating the served document (openapi-spec-validator)"
  "$VENV/bin/openapi-spec-validator" "$OUT/openapi.json" || fail "the served /openapi.json is not valid OpenAPI"

  log "generating a Python client from the live document (openapi-python-client)"
  # Its post-generation hook formats with ruff, which the venv holds.
  if ! PATH="$VENV/bin:$PATH" "$VENV/bin/openapi-python-client" generate \
    --url "http://127.0.0.1:$PORT/openapi.json" --meta none --output-path "$OUT/redeem_gateway_client" \
    --fail-on-warning >"$OUT/generate.log" 2>&1; then
    cat "$OUT/generate.log" >&2
    fail "openapi-python-client could not generate a clean client from the spec"
  fi

  log "running the scenario through the generated client"
  BASE_URL="http://127.0.0.1:$PORT" PYTHONPATH="$OUT" "$VENV/bin/python" "$ROOT/scripts/client_scenario.py" \
    || fail "the scenario failed through the generated client (see above; gateway log: ${OUT#"$ROOT"/}/gateway.log)"
  log "passed: the document is valid and the generated client works (output under ${OUT#"$ROOT"/})"
}

main "$@"
