-- The reconciler's Postgres change feed: it looks at the codes whose gate
-- state may disagree with Postgres because of a change made here, not at every
-- active code. `updated_at` already records operator changes (limit, status,
-- window: codes_updated index, V4); `slot_changed_at` records the other kind,
-- a ticket freed on the Postgres side (a coupon use cancelled), so a cancel
-- whose Redis step failed is found by time too. Scanned as "changed within the
-- look-back" (several passes), so one failed pass loses nothing.
ALTER TABLE codes ADD COLUMN slot_changed_at TIMESTAMPTZ;
CREATE INDEX codes_slot_changed ON codes (slot_changed_at) WHERE slot_changed_at IS NOT NULL;

-- As in V6, plus the time of the change. An UPDATE of non-key columns: it
-- takes FOR NO KEY UPDATE, so commits (FOR KEY SHARE) never wait on it.
CREATE OR REPLACE FUNCTION coupon_use_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'applied' AND NEW.status <> 'applied' THEN
        UPDATE codes SET slot_changes = slot_changes + 1, slot_changed_at = now() WHERE id = NEW.code_id;
    END IF;
    RETURN NEW;
END
$$;
