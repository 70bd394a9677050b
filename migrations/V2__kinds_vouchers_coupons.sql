-- Three kinds of limited reward on one gate: credit codes (V1), first-N
-- voucher campaigns, and rule-bound checkout coupons.

ALTER TABLE codes
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'credit' CHECK (kind IN ('credit', 'voucher', 'coupon')),
    ADD COLUMN per_user_limit INTEGER NOT NULL DEFAULT 1 CHECK (per_user_limit BETWEEN 1 AND 1000),
    ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'Asia/Tehran',
    -- Voucher: {percent, max_amount, voucher_type, valid_days}. Coupon: see src/coupons/discount.rs.
    ADD COLUMN reward JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Coupon eligibility rules: see src/coupons/rules.rs.
    ADD COLUMN rules JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Bulk-generated codes carry the campaign they were generated for.
    ADD COLUMN batch TEXT;

-- Only credit codes carry a credit amount.
ALTER TABLE codes DROP CONSTRAINT codes_amount_check;
ALTER TABLE codes ADD CONSTRAINT codes_amount_by_kind
    CHECK ((kind = 'credit' AND amount > 0) OR (kind <> 'credit' AND amount = 0));
CREATE INDEX codes_kind_status ON codes (kind, status, id);
CREATE INDEX codes_batch ON codes (batch) WHERE batch IS NOT NULL;

-- ticket < limit for every table that holds tickets. The code's row is read
-- FOR KEY SHARE, the lock the foreign key takes anyway: commits never block
-- one another, but a limit change (which takes FOR UPDATE) waits for commits
-- in flight and they see the new limit after it.
CREATE OR REPLACE FUNCTION ticket_below_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lim INTEGER;
BEGIN
    SELECT redemption_limit INTO lim FROM codes WHERE id = NEW.code_id FOR KEY SHARE;
    IF lim IS NULL OR NEW.ticket >= lim THEN
        RAISE EXCEPTION 'ticket % is not below the limit % of code %', NEW.ticket, lim, NEW.code_id
            USING ERRCODE = 'check_violation', CONSTRAINT = TG_TABLE_NAME || '_ticket_below_limit';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER redemptions_ticket_below_limit ON redemptions;
DROP FUNCTION redemptions_ticket_below_limit();
CREATE TRIGGER redemptions_ticket_below_limit
    BEFORE INSERT OR UPDATE OF ticket, code_id ON redemptions
    FOR EACH ROW EXECUTE FUNCTION ticket_below_limit();

-- A voucher issued to one of a campaign's first N users, once per user.
CREATE TABLE vouchers (
    id           BIGSERIAL   PRIMARY KEY,
    code_id      BIGINT      NOT NULL REFERENCES codes (id),
    user_id      BIGINT      NOT NULL REFERENCES users (id),
    ticket       INTEGER     NOT NULL CHECK (ticket >= 0),
    voucher_type TEXT        NOT NULL,
    percent      INTEGER     NOT NULL CHECK (percent BETWEEN 1 AND 100),
    max_amount   BIGINT      CHECK (max_amount IS NULL OR max_amount > 0),
    issued_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    CONSTRAINT vouchers_code_user_key UNIQUE (code_id, user_id),
    CONSTRAINT vouchers_code_ticket_key UNIQUE (code_id, ticket)
);
CREATE INDEX vouchers_user ON vouchers (user_id, id DESC);
CREATE TRIGGER vouchers_ticket_below_limit
    BEFORE INSERT OR UPDATE OF ticket, code_id ON vouchers
    FOR EACH ROW EXECUTE FUNCTION ticket_below_limit();

-- A coupon applied to an order. One row per (code, order), ever: a retried
-- redeem returns this row. While applied it holds a ticket (<= limit live
-- uses) and one of the user's per-user slots; cancelling frees both.
CREATE TABLE coupon_redemptions (
    id            BIGSERIAL   PRIMARY KEY,
    code_id       BIGINT      NOT NULL REFERENCES codes (id),
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    order_number  TEXT        NOT NULL CHECK (length(order_number) BETWEEN 1 AND 64),
    ticket        INTEGER     NOT NULL CHECK (ticket >= 0),
    user_seq      INTEGER     NOT NULL CHECK (user_seq >= 1),
    order_total   BIGINT      NOT NULL CHECK (order_total >= 0),
    discount      BIGINT      NOT NULL CHECK (discount >= 0 AND discount <= order_total),
    status        TEXT        NOT NULL DEFAULT 'applied' CHECK (status IN ('applied', 'cancelled')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    cancelled_at  TIMESTAMPTZ,
    CONSTRAINT coupon_redemptions_code_order_key UNIQUE (code_id, order_number)
);
CREATE UNIQUE INDEX coupon_redemptions_code_ticket_key ON coupon_redemptions (code_id, ticket) WHERE status = 'applied';
CREATE UNIQUE INDEX coupon_redemptions_code_user_seq_key ON coupon_redemptions (code_id, user_id, user_seq) WHERE status = 'applied';
CREATE TRIGGER coupon_redemptions_ticket_below_limit
    BEFORE INSERT OR UPDATE OF ticket, code_id ON coupon_redemptions
    FOR EACH ROW EXECUTE FUNCTION ticket_below_limit();

-- user_seq <= the code's per-user limit.
CREATE FUNCTION coupon_user_seq_within_limit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    per_user INTEGER;
BEGIN
    SELECT per_user_limit INTO per_user FROM codes WHERE id = NEW.code_id;
    IF NEW.user_seq > per_user THEN
        RAISE EXCEPTION 'user % has used code % % times already', NEW.user_id, NEW.code_id, per_user
            USING ERRCODE = 'check_violation', CONSTRAINT = 'coupon_redemptions_per_user_limit';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER coupon_redemptions_per_user_limit
    BEFORE INSERT ON coupon_redemptions
    FOR EACH ROW EXECUTE FUNCTION coupon_user_seq_within_limit();
