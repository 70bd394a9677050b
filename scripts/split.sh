#!/usr/bin/env bash
# The split on this machine: the wallet role and the redemption role as two
# processes, each with its own database on the project-local PostgreSQL
# (redeem_gateway for redemption, redeem_gateway_wallet for the wallet).
#
#   redemption  http://127.0.0.1:${REDEMPTION_PORT:-8081}  users, tokens, JWKS, codes, vouchers, coupons, admin
#   wallet      http://127.0.0.1:${WALLET_PORT:-8082}  /wallet/* (balance, transactions, credits, debits)
#
# Tokens are Ed25519: the redemption role signs with .local/split/signing.pem
# (made here on first run with `redeem-gateway keygen`) and publishes the
# public key; the wallet fetches it from the redemption role's JWKS.
# Ctrl-C stops both. `make run-split` calls this after building.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=scripts/services.sh
BIN=${BIN:-./target/release/redeem-gateway}
REDEMPTION_PORT=${REDEMPTION_PORT:-8081}
WALLET_PORT=${WALLET_PORT:-8082}
KEY=.local/split/signing.pem

$SERVICES up
[ -f .env ] || $SERVICES dotenv
mkdir -p .local/split
[ -f "$KEY" ] || "$BIN" keygen --out "$KEY"
wallet_db=$($SERVICES wallet-db)

# Both read .env for the rest; what differs per role is set here.
export JWT_SIGNING_KEY_FILE=$PWD/$KEY
export WALLET_URL=http://127.0.0.1:$WALLET_PORT
export JWKS_URL=http://127.0.0.1:$REDEMPTION_PORT/.well-known/jwks.json
export WALLET_DATABASE_URL=$wallet_db

pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop INT TERM EXIT

HTTP_ADDR=127.0.0.1:$WALLET_PORT METRICS_ADDR=127.0.0.1:9465 "$BIN" serve --role wallet &
pids+=($!)
HTTP_ADDR=127.0.0.1:$REDEMPTION_PORT METRICS_ADDR=127.0.0.1:9464 "$BIN" serve --role redemption &
pids+=($!)
echo "split: redemption on 127.0.0.1:$REDEMPTION_PORT, wallet on 127.0.0.1:$WALLET_PORT (Ctrl-C stops both)"
wait -n
