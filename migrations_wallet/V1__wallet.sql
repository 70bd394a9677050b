-- The wallet role's own database (the split: `serve --role wallet`): wallets
-- and their ledger, the same shape as the main schema's (migrations/V1, V5)
-- minus what lives on the redemption side. No users table here: user ids
-- come from tokens and from the services that call, so there is no foreign
-- key to users; no vouchers table: a top-up that spends a voucher needs the
-- single process (role `all`).

CREATE TABLE wallets (
    user_id    BIGINT      PRIMARY KEY CHECK (user_id > 0),
    balance    BIGINT      NOT NULL DEFAULT 0 CONSTRAINT wallets_balance_non_negative CHECK (balance >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only. reference is the business event's id (for the redemption
-- role's credits `svc:redemption:redemption:<id>`), unique, so a retried
-- credit can never land twice.
CREATE TABLE ledger (
    id            BIGSERIAL   PRIMARY KEY,
    user_id       BIGINT      NOT NULL CHECK (user_id > 0),
    amount        BIGINT      NOT NULL,
    kind          TEXT        NOT NULL,
    reference     TEXT        NOT NULL CONSTRAINT ledger_reference_key UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason        TEXT        CHECK (reason IS NULL OR length(reason) BETWEEN 1 AND 200),
    balance_after BIGINT      CHECK (balance_after IS NULL OR balance_after >= 0),
    voucher_id    BIGINT,
    discount      BIGINT      CHECK (discount IS NULL OR discount > 0),
    purchase_type TEXT        CHECK (purchase_type IS NULL OR length(purchase_type) BETWEEN 1 AND 64),
    CONSTRAINT ledger_sign_by_kind CHECK (
        (kind = 'service_debit' AND (amount < 0 OR (amount = 0 AND voucher_id IS NOT NULL)))
        OR (kind <> 'service_debit' AND amount > 0)),
    CONSTRAINT ledger_voucher_only_on_debits CHECK (
        (voucher_id IS NULL AND discount IS NULL) OR kind = 'service_debit')
);
CREATE INDEX ledger_user_newest ON ledger (user_id, id DESC);
CREATE UNIQUE INDEX ledger_voucher_once ON ledger (voucher_id) WHERE voucher_id IS NOT NULL;
