-- The credit path's checks, once per statement instead of once per row.
--
-- A group commit (src/redemption/batcher.rs) writes up to COMMIT_BATCH_MAX_ROWS
-- redemptions, wallet upserts and ledger rows in one statement. Per row, the
-- schema ran five checks, each an SPI query of its own: the ticket trigger
-- (reading the code's row FOR KEY SHARE) and four foreign keys (redemptions ->
-- codes, redemptions -> users, wallets -> users, ledger -> users), each again
-- locking its referenced row. Measured with pgbench on the batched statement
-- (64 rows, one client): 162 statements/s with those checks, 334 without the
-- foreign keys, 429 without any. The guarantees stay; only their cost changes:
--
--  * "no ticket at or above the code's limit, no use of a paused, ended or
--    closed code" — one AFTER STATEMENT trigger reads the inserted rows
--    (a transition table), locks each of their codes FOR KEY SHARE once, in
--    id order, and refuses the statement with the very errors the row trigger
--    raised (`redemptions_ticket_below_limit`, `code_not_redeemable` with the
--    reason as DETAIL). The lock is taken after the rows are written and
--    before the statement ends, so the pause/limit protocol of V4 holds as
--    before: a PATCH holding the row FOR UPDATE makes the commit wait, and
--    READ COMMITTED re-reads the row it then locks.
--  * "every redemption, wallet and ledger row names an existing user (and
--    code)" — the same statement triggers check the inserted rows against
--    users and codes in one query each, raising foreign_key_violation under
--    the foreign key's old name (the gateway maps `*_user_id_fkey` to an
--    unknown user). A foreign key also stops a referenced row from going away;
--    here users and codes cannot go away at all: deleting or truncating them,
--    or changing an id, is refused (nothing in the service ever deletes either).
--
-- Skipped rows (ON CONFLICT DO NOTHING) are not in the transition table and are
-- not judged: they wrote nothing. An update of a redemption's ticket or code
-- still runs the row trigger of V4; its user or code id cannot change.

-- Dropping a foreign key locks both of its tables ACCESS EXCLUSIVE. Take every
-- lock this migration needs at once, codes first (an admin PATCH locks a code
-- row, then reads redemptions: taking redemptions before codes could deadlock
-- with it), and give up after a few seconds rather than queue the whole
-- service behind a long transaction: the migration is then simply run again.
SET LOCAL lock_timeout = '5s';
LOCK TABLE codes, users, redemptions, wallets, ledger IN ACCESS EXCLUSIVE MODE;

ALTER TABLE redemptions DROP CONSTRAINT redemptions_code_id_fkey;
ALTER TABLE redemptions DROP CONSTRAINT redemptions_user_id_fkey;
ALTER TABLE wallets DROP CONSTRAINT wallets_user_id_fkey;
ALTER TABLE ledger DROP CONSTRAINT ledger_user_id_fkey;

-- Users and codes are never deleted, and their ids never change.
CREATE FUNCTION refuse_removal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never removed and their ids never change (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER users_never_removed BEFORE DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removal();
CREATE TRIGGER users_id_fixed BEFORE UPDATE OF id ON users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION refuse_removal();
CREATE TRIGGER codes_never_removed BEFORE DELETE OR TRUNCATE ON codes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_removal();
CREATE TRIGGER codes_id_fixed BEFORE UPDATE OF id ON codes
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION refuse_removal();

-- A redemption, wallet or ledger row's user (and a redemption's code) never changes.
CREATE FUNCTION refuse_reassignment() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % of a % row never changes', TG_ARGV[0], TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER redemptions_owner_fixed BEFORE UPDATE OF user_id, code_id ON redemptions
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.code_id IS DISTINCT FROM NEW.code_id)
    EXECUTE FUNCTION refuse_reassignment('user or code');
CREATE TRIGGER wallets_owner_fixed BEFORE UPDATE OF user_id ON wallets
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id) EXECUTE FUNCTION refuse_reassignment('user');
CREATE TRIGGER ledger_owner_fixed BEFORE UPDATE OF user_id ON ledger
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id) EXECUTE FUNCTION refuse_reassignment('user');

-- Every inserted row's user exists. TG_ARGV[0] is the old foreign key's name.
-- A row's user is looked up in the users table of the same database; the
-- transition table is named `added` by every trigger below.
CREATE FUNCTION added_users_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing BIGINT;
BEGIN
    SELECT a.user_id INTO missing FROM added a
    WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "%" violates foreign key constraint "%"', TG_TABLE_NAME, TG_ARGV[0]
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = TG_ARGV[0], TABLE = TG_TABLE_NAME,
                  DETAIL = format('Key (user_id)=(%s) is not present in table "users".', missing);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER wallets_user_exists AFTER INSERT ON wallets
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION added_users_exist('wallets_user_id_fkey');
CREATE TRIGGER ledger_user_exists AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION added_users_exist('ledger_user_id_fkey');

-- The inserted redemptions: their codes locked and judged (limit, status,
-- window), then their users checked. The first offending row is reported, the
-- codes in id order, as the row trigger would have for a one-row statement.
CREATE FUNCTION redemptions_added_checked() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    c RECORD;
    bad RECORD;
    why TEXT;
BEGIN
    FOR c IN
        SELECT codes.id, codes.redemption_limit, codes.status, codes.starts_at, codes.ends_at
        FROM codes WHERE codes.id IN (SELECT DISTINCT code_id FROM added)
        ORDER BY codes.id
        FOR KEY SHARE
    LOOP
        SELECT a.ticket INTO bad FROM added a
        WHERE a.code_id = c.id AND a.ticket >= c.redemption_limit
        ORDER BY a.ticket LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ticket % is not below the limit % of code %', bad.ticket, c.redemption_limit, c.id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'redemptions_ticket_below_limit';
        END IF;
        why := CASE
            WHEN c.status = 'paused' THEN 'paused'
            WHEN c.status = 'ended' THEN 'ended'
            WHEN c.starts_at IS NOT NULL AND clock_timestamp() < c.starts_at THEN 'not_started'
            WHEN c.ends_at IS NOT NULL AND clock_timestamp() >= c.ends_at THEN 'expired'
        END;
        IF why IS NOT NULL THEN
            RAISE EXCEPTION 'code % is not redeemable now', c.id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'code_not_redeemable', DETAIL = why;
        END IF;
    END LOOP;
    -- A code that does not exist: as the row trigger said, its tickets are not below any limit.
    SELECT a.code_id, a.ticket INTO bad FROM added a
    WHERE NOT EXISTS (SELECT 1 FROM codes WHERE codes.id = a.code_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ticket % is not below the limit of code %: no such code', bad.ticket, bad.code_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'redemptions_ticket_below_limit';
    END IF;
    PERFORM 1 FROM added a WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id);
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "redemptions" violates foreign key constraint "redemptions_user_id_fkey"'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'redemptions_user_id_fkey', TABLE = 'redemptions';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER redemptions_ticket_below_limit ON redemptions;
-- A changed ticket or code of an existing row is still judged row by row (V4).
CREATE TRIGGER redemptions_ticket_below_limit
    BEFORE UPDATE OF ticket, code_id ON redemptions
    FOR EACH ROW EXECUTE FUNCTION ticket_below_limit();
CREATE TRIGGER redemptions_added_checked AFTER INSERT ON redemptions
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION redemptions_added_checked();
