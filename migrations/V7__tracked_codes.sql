-- Per-code metric series only for codes an operator marks as tracked: a
-- code's name is not public until someone uses it, and a label per bulk
-- code would grow the metrics without bound. Bulk codes are never tracked.
ALTER TABLE codes ADD COLUMN tracked BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE codes ADD CONSTRAINT codes_bulk_untracked CHECK (NOT (tracked AND batch IS NOT NULL));
