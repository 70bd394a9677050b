-- Services as callers: wallet credits and debits by a service's reference,
-- exactly once each, and vouchers spent on top-ups paid from the wallet.

-- Every movement is one ledger row with a signed amount: credits > 0, debits
-- < 0 (`kind` says which). A service's movement carries its reason, the
-- balance right after it (so a replay answers what the first call did) and,
-- for a top-up, the voucher it spent and the discount that voucher gave. A
-- top-up wholly paid by its voucher moves 0, and is still one row.
ALTER TABLE ledger
    ADD COLUMN reason        TEXT   CHECK (reason IS NULL OR length(reason) BETWEEN 1 AND 200),
    ADD COLUMN balance_after BIGINT CHECK (balance_after IS NULL OR balance_after >= 0),
    ADD COLUMN voucher_id    BIGINT REFERENCES vouchers (id),
    ADD COLUMN discount      BIGINT CHECK (discount IS NULL OR discount > 0),
    ADD COLUMN purchase_type TEXT   CHECK (purchase_type IS NULL OR length(purchase_type) BETWEEN 1 AND 64);
ALTER TABLE ledger DROP CONSTRAINT ledger_amount_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_sign_by_kind CHECK (
    (kind = 'service_debit' AND (amount < 0 OR (amount = 0 AND voucher_id IS NOT NULL)))
    OR (kind <> 'service_debit' AND amount > 0));
ALTER TABLE ledger ADD CONSTRAINT ledger_voucher_only_on_debits CHECK (
    (voucher_id IS NULL AND discount IS NULL) OR kind = 'service_debit');

-- A voucher is spent by at most one ledger row, whatever races: the second
-- insert naming it waits for the first and then fails.
CREATE UNIQUE INDEX ledger_voucher_once ON ledger (voucher_id) WHERE voucher_id IS NOT NULL;

-- When the voucher was spent (NULL: unused). Set in the debit's transaction.
ALTER TABLE vouchers ADD COLUMN used_at TIMESTAMPTZ;
