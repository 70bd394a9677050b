-- The split (`serve --role redemption`): a code's credit goes to the wallet
-- service over REST. The redemption and its outbox row are written by one
-- statement, so a redemption exists iff its credit is owed; the row is marked
-- done once the wallet has answered for its reference (idempotent there), and
-- retried with backoff until then. Unused by the single process (role `all`),
-- which credits in the redemption's own statement.
CREATE TABLE credit_outbox (
    redemption_id   BIGINT      PRIMARY KEY REFERENCES redemptions (id),
    code_id         BIGINT      NOT NULL REFERENCES codes (id),
    user_id         BIGINT      NOT NULL,
    amount          BIGINT      NOT NULL CHECK (amount > 0),
    -- What the wallet is sent: `redemption:<id>`, unique.
    reference       TEXT        NOT NULL CONSTRAINT credit_outbox_reference_key UNIQUE,
    reason          TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    -- Not tried before this (a lease while a call is in flight, then the backoff).
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at         TIMESTAMPTZ,
    -- The wallet's ledger row for it, once done.
    wallet_entry_id BIGINT
);
CREATE INDEX credit_outbox_due ON credit_outbox (next_attempt_at) WHERE done_at IS NULL;
CREATE INDEX credit_outbox_code_pending ON credit_outbox (code_id) WHERE done_at IS NULL;
