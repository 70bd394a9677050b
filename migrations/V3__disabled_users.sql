-- Disabling a user (the "delete" of an account that has money history):
-- their tokens are refused from then on and they cannot log in.
ALTER TABLE users ADD COLUMN disabled_at TIMESTAMPTZ;
CREATE INDEX users_disabled ON users (id) WHERE disabled_at IS NOT NULL;
