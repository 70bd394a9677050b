-- Operator controls bind in the commit itself, and retries are safe.
--
-- 1. Every table that holds tickets refuses a use of a code that is paused,
--    ended, or outside its window, judged by the database's clock
--    (clock_timestamp() after the row lock is held, not now(): a commit that
--    started before an "end now" and waited on the row must see the end). The check reads the code's row FOR KEY
--    SHARE, as the limit check already did. A pause (or any change through
--    PATCH) locks the row FOR UPDATE before it writes, and the two locks
--    conflict, so the order is total:
--      - a commit that read the row first holds its lock until it commits, so
--        the pause waits for it: that use landed before the pause committed;
--      - a commit that comes after the pause's lock waits for the pause to
--        commit, then re-reads the row (READ COMMITTED re-checks a locked row
--        that was updated) and sees it paused: refused, nothing written.
--    No use commits after a pause has committed, whatever any cache believes.
CREATE OR REPLACE FUNCTION ticket_below_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    c RECORD;
    why TEXT;
BEGIN
    SELECT redemption_limit, status, starts_at, ends_at INTO c FROM codes WHERE id = NEW.code_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ticket % is not below the limit of code %: no such code', NEW.ticket, NEW.code_id
            USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_ticket_below_limit';
    END IF;
    IF NEW.ticket >= c.redemption_limit THEN
        RAISE EXCEPTION 'ticket % is not below the limit % of code %', NEW.ticket, c.redemption_limit, NEW.code_id
            USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_ticket_below_limit';
    END IF;
    -- Only a new use is judged; an update of an existing row (a cancel) is not.
    IF TG_OP = 'INSERT' THEN
        why := CASE
            WHEN c.status = 'paused' THEN 'paused'
            WHEN c.status = 'ended' THEN 'ended'
            WHEN c.starts_at IS NOT NULL AND clock_timestamp() < c.starts_at THEN 'not_started'
            WHEN c.ends_at IS NOT NULL AND clock_timestamp() >= c.ends_at THEN 'expired'
        END;
        IF why IS NOT NULL THEN
            RAISE EXCEPTION 'code % is not redeemable now', NEW.code_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'code_not_redeemable', DETAIL = why;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- The id of the transaction that last changed the code (status, window,
-- limit...): changes serialise on the row lock, so later changes carry larger
-- numbers. The gate keeps the controls of the largest one it has seen, so a
-- slow writer cannot undo a newer pause (see lua/set_status.lua).
ALTER TABLE codes ADD COLUMN control_rev BIGINT NOT NULL DEFAULT 0;
-- The reconciler re-asserts the controls of recently changed codes.
CREATE INDEX codes_updated ON codes (updated_at);

-- 2. Idempotency keys (the `Idempotency-Key` header on POST /codes/use and
--    POST /coupons/redeem), per caller, kept 24 hours. The outcome of a use
--    is read from the tables above (the truth); a final answer is kept here
--    so a replay returns it verbatim. No foreign key: the purge and the hot
--    path never wait on users.
CREATE TABLE idempotency_keys (
    user_id         BIGINT      NOT NULL,
    key             TEXT        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the route and the request body as parsed: another body is refused.
    fingerprint     BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set while a request runs the operation; a stale one (older than the
    -- claim grace period) belongs to a gateway that died.
    locked_at       TIMESTAMPTZ,
    -- The final answer, once there is one (never a 5xx: those are retried).
    response_status SMALLINT,
    response_body   JSONB,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
