-- release.lua: undo a claim whose Postgres commit did not happen.
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free,
-- KEYS[5] dropped, KEYS[6] owners  (as in claim.lua)
-- ARGV[1] holder (see claim.lua)
-- ARGV[2] ticket the caller claimed, or '*' for whatever ticket the holder's
--         pending claim has (after a claim whose reply timed out)
-- ARGV[3] mode:
--   'free'    drop the claim and give the ticket back (commit failed, or the
--             ticket is not below the limit any more)
--   'keep'    Postgres says the holder already has a committed use: keep a
--             claim (so the gate answers "already redeemed"), give the spare
--             ticket back. The claim becomes -1: the holder's committed ticket
--             is not known here, and the spare one must not stay pointed at,
--             or it would look held while it sits on the free list.
--   'discard' drop the claim, do not give the ticket back (Postgres says the
--             ticket is used by another row); the code is marked for the audit
-- ARGV[4] '1' = only if the claim is still pending (the reconciler's stale sweep)
--
-- Returns 1 if released, 0 if the claim was not (or no longer) this ticket.
-- Invariant: a ticket goes back at most once per claim (compare-and-release),
-- to the free list if below the limit, else to `dropped` (never lost); claims
-- and owners stay each other's reverse. Every change bumps meta.moves, which
-- the audit uses to detect that the state moved under it.
local meta, claims, pending, free, dropped, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
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
if redis.call('HGET', owners, ticket) == user then
  redis.call('HDEL', owners, ticket)
end
if mode == 'keep' then
  redis.call('HSET', claims, user, -1)
else
  redis.call('HDEL', claims, user)
end
redis.call('HINCRBY', meta, 'moves', 1)
local limit = tonumber(redis.call('HGET', meta, 'limit'))
if mode == 'discard' then
  redis.call('HINCRBY', meta, 'dirty', 1)
elseif limit and tonumber(ticket) < limit then
  redis.call('LPUSH', free, ticket)
elseif limit and tonumber(ticket) >= 0 then
  redis.call('ZADD', dropped, ticket, ticket)
end
return 1
