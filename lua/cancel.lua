-- cancel.lua: give back the ticket of a use Postgres has just cancelled (a
-- coupon's order was cancelled), from the Postgres row's word, even when Redis
-- forgot the claim (a rebuild, a release after a commit the gateway did not
-- see land, a sweep, a Redis that lost its last writes).
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free,
-- KEYS[5] dropped, KEYS[6] owners  (as in claim.lua)
-- ARGV[1] holder ('order:<number>'), ARGV[2] the ticket of its cancelled row
--
-- Returns 1 given back through the holder's claim | 2 given back although
-- Redis had forgotten the claim | 0 nothing to give back here (no state: a
-- rebuild reads Postgres; the ticket is already free, still above the
-- counter, or held by another claim).
--
-- Why a forgotten claim's ticket can be given back without a double: until the
-- row was cancelled, Postgres let no other row hold the ticket (a unique index
-- on applied uses), so the only other holders Redis can have are claims taken
-- since it fell off Redis's books, and claim.lua records each in `owners`
-- until that claim is released. So: no owner, not on the free list, not set
-- aside in `dropped`, below the counter => nobody holds it and it is not free:
-- give it back, once (a repeat finds it on the free list or owned). Whatever
-- this declines (an owner whose commit then fails with "ticket taken"), the
-- reconciler's audit settles: the code is marked dirty.
local meta, claims, pending, free, dropped, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local holder, ticket = ARGV[1], ARGV[2]
local t = tonumber(ticket)

local limit = tonumber(redis.call('HGET', meta, 'limit'))
if not limit then
  return 0
end
local nxt = tonumber(redis.call('HGET', meta, 'next') or '0')
redis.call('HINCRBY', meta, 'moves', 1)

local function give_back()
  if t < limit then redis.call('LPUSH', free, ticket) else redis.call('ZADD', dropped, t, t) end
end

if redis.call('HGET', claims, holder) == ticket then
  redis.call('ZREM', pending, holder)
  redis.call('HDEL', claims, holder)
  if redis.call('HGET', owners, ticket) == holder then redis.call('HDEL', owners, ticket) end
  give_back()
  return 1
end

-- Redis forgot this claim.
redis.call('HINCRBY', meta, 'dirty', 1)
local stale = redis.call('HGET', claims, holder)
if stale and not redis.call('ZSCORE', pending, holder) then
  -- The holder's entry points elsewhere (or is -1): its only use is cancelled now.
  redis.call('HDEL', claims, holder)
  if redis.call('HGET', owners, stale) == holder then redis.call('HDEL', owners, stale) end
end
if t >= nxt or redis.call('HEXISTS', owners, ticket) == 1 or redis.call('ZSCORE', dropped, ticket) then
  return 0
end
if redis.call('LPOS', free, ticket) then
  return 0
end
give_back()
return 2
