-- Redeem Gateway: users, wallets, ledger, codes, redemptions.
-- Postgres is the source of truth. The constraints below enforce the money
-- invariants on their own, so even a Redis that lost its data cannot make the
-- system over-issue, credit a user twice, or break a balance.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (length(username) BETWEEN 3 AND 32),
    password_hash TEXT        NOT NULL,
    phone         TEXT        CHECK (phone IS NULL OR length(phone) BETWEEN 5 AND 20),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per user that ever received money. balance is a cache of the sum of
-- the user's ledger rows, kept in the same transaction as every ledger insert.
CREATE TABLE wallets (
    user_id    BIGINT      PRIMARY KEY REFERENCES users (id),
    balance    BIGINT      NOT NULL DEFAULT 0 CONSTRAINT wallets_balance_non_negative CHECK (balance >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only. reference names the business event a row comes from
-- ("redemption:<id>"), so a retried credit can never land twice.
CREATE TABLE ledger (
    id          BIGSERIAL   PRIMARY KEY,
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    amount      BIGINT      NOT NULL CHECK (amount <> 0),
    kind        TEXT        NOT NULL,
    reference   TEXT        NOT NULL CONSTRAINT ledger_reference_key UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_user_newest ON ledger (user_id, id DESC);

CREATE TABLE codes (
    id               BIGSERIAL   PRIMARY KEY,
    code             TEXT        NOT NULL UNIQUE CHECK (code ~ '^[A-Z0-9_-]{1,64}$'),
    amount           BIGINT      NOT NULL CHECK (amount > 0),
    redemption_limit INTEGER     NOT NULL CHECK (redemption_limit >= 0),
    starts_at        TIMESTAMPTZ,
    ends_at          TIMESTAMPTZ,
    status           TEXT        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'ended')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Figures of the Redis gate, written back by the reconciler so that the
    -- report survives a Redis loss. Never used to decide admission.
    synced_remaining    INTEGER,
    synced_rejections   JSONB   NOT NULL DEFAULT '{}'::jsonb,
    synced_at           TIMESTAMPTZ,
    CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);

-- A redemption exists iff its credit exists: both are written by one statement.
-- (code_id, user_id) unique: nobody redeems a code twice.
-- (code_id, ticket) unique + ticket below the limit: at most `limit` rows.
-- No counter row: the ticket constraints replace it, so commits for one hot
-- code never queue on one row lock.
CREATE TABLE redemptions (
    id         BIGSERIAL   PRIMARY KEY,
    code_id    BIGINT      NOT NULL REFERENCES codes (id),
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    ticket     INTEGER     NOT NULL CHECK (ticket >= 0),
    amount     BIGINT      NOT NULL CHECK (amount > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT redemptions_code_user_key UNIQUE (code_id, user_id),
    CONSTRAINT redemptions_code_ticket_key UNIQUE (code_id, ticket)
);
CREATE INDEX redemptions_user ON redemptions (user_id);

-- ticket < the code's limit, for every writer. The code's row is read without
-- a lock, so concurrent commits for one code do not serialise here.
CREATE FUNCTION redemptions_ticket_below_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lim INTEGER;
BEGIN
    SELECT redemption_limit INTO lim FROM codes WHERE id = NEW.code_id;
    IF lim IS NULL OR NEW.ticket >= lim THEN
        RAISE EXCEPTION 'ticket % is not below the limit % of code %', NEW.ticket, lim, NEW.code_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'redemptions_ticket_below_limit';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER redemptions_ticket_below_limit
    BEFORE INSERT OR UPDATE OF ticket, code_id ON redemptions
    FOR EACH ROW EXECUTE FUNCTION redemptions_ticket_below_limit();
