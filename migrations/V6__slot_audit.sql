-- No slot lost for good: what the reconciler compares the Redis gate with.
--
-- limit_version orders limit changes: every change of redemption_limit bumps
-- it under the code's row lock (FOR UPDATE), so two PATCHes have distinct,
-- ordered versions, and the gate applies a limit only if its version is newer
-- than the one it holds (lua/set_limit.lua): calls that reach Redis out of
-- order cannot leave the older limit in force.
--
-- slot_changes counts changes that free a ticket on the Postgres side (a
-- coupon use cancelled). The reconciler audits a code's tickets when this
-- differs from the value its last audit started from, so a cancel whose
-- Redis step failed (Redis down) is still healed within a pass.
ALTER TABLE codes
    ADD COLUMN limit_version BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN slot_changes  BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION codes_limit_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.redemption_limit IS DISTINCT FROM OLD.redemption_limit THEN
        NEW.limit_version := OLD.limit_version + 1;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER codes_limit_version
    BEFORE UPDATE OF redemption_limit ON codes
    FOR EACH ROW EXECUTE FUNCTION codes_limit_version();

-- An UPDATE of a non-key column takes FOR NO KEY UPDATE on the code's row,
-- which does not conflict with the FOR KEY SHARE every commit takes: commits
-- never wait on a cancel.
CREATE FUNCTION coupon_use_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'applied' AND NEW.status <> 'applied' THEN
        UPDATE codes SET slot_changes = slot_changes + 1 WHERE id = NEW.code_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER coupon_redemptions_cancelled
    AFTER UPDATE OF status ON coupon_redemptions
    FOR EACH ROW EXECUTE FUNCTION coupon_use_cancelled();
