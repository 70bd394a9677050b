-- release.lua: undo a claim whose Postgres commit did not happen.
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free (as in claim.lua)
-- ARGV[1] holder (see claim.lua)
-- ARGV[2] ticket the caller claimed, or '*' for whatever ticket the holder's
--         pending claim has (after a claim whose reply timed out)
-- ARGV[3] mode:
--   'free'    drop the claim and give the ticket back (commit failed)
--   'keep'    keep the user's claim, give the ticket back (Postgres says the
--             user already redeemed: the claim is true, the ticket is spare)
--   'discard' drop the claim, do not give the ticket back (Postgres says the
--             ticket is already used, or no longer below the limit)
-- ARGV[4] '1' = only if the claim is still pending (the reconciler's stale sweep)
--
-- Returns 1 if released, 0 if the claim was not (or no longer) this ticket.
-- Invariant: a ticket goes back on the free list at most once per claim, and
-- only while no Postgres row holds it, so the gate never hands out more than
-- `limit` live tickets.
local meta, claims, pending, free = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, ticket, mode, only_pending = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if ticket == '*' then
  ticket = redis.call('HGET', claims, user)
  if not ticket or only_pending ~= '1' then return 0 end
end
if redis.call('HGET', claims, user) ~= ticket then
  return 0
end
if only_pending == '1' and not redis.call('ZSCORE', pending, user) then
  return 0
end
redis.call('ZREM', pending, user)
if mode ~= 'keep' then
  redis.call('HDEL', claims, user)
end
if mode ~= 'discard' then
  local limit = tonumber(redis.call('HGET', meta, 'limit'))
  if limit and tonumber(ticket) < limit then
    redis.call('LPUSH', free, ticket)
  end
end
return 1
