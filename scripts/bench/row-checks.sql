-- For the benchmark only (scripts/bench.sh, "schema cost"): puts back on a
-- scratch database the per-row checks V10 replaced — the BEFORE ROW ticket
-- trigger of V4 and the foreign keys of V1 — so the same pgbench statements
-- can be measured against both schemas in one run. Never run on a real database.
DROP TRIGGER redemptions_added_checked ON redemptions;
DROP TRIGGER wallets_user_exists ON wallets;
DROP TRIGGER ledger_user_exists ON ledger;
DROP TRIGGER redemptions_ticket_below_limit ON redemptions;
CREATE TRIGGER redemptions_ticket_below_limit
    BEFORE INSERT OR UPDATE OF ticket, code_id ON redemptions
    FOR EACH ROW EXECUTE FUNCTION ticket_below_limit();
ALTER TABLE redemptions ADD CONSTRAINT redemptions_code_id_fkey FOREIGN KEY (code_id) REFERENCES codes (id);
ALTER TABLE redemptions ADD CONSTRAINT redemptions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE wallets ADD CONSTRAINT wallets_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE ledger ADD CONSTRAINT ledger_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
