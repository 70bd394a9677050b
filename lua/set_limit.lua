-- set_limit.lua: change a code's limit in the gate, with work proportional to
-- what changed (never a walk over claims or tickets).
--
-- KEYS[1] meta, KEYS[2] free, KEYS[3] dropped   (as in claim.lua)
-- ARGV[1] the new limit, ARGV[2] its version (codes.limit_version of the
--         Postgres row that holds it), ARGV[3] at most this many tickets moved
--
-- Ordered: applied only if its version is newer than the gate's (or the same
-- version with another limit: Postgres is the truth), so two PATCHes whose
-- calls arrive out of order cannot leave the older limit in force.
-- Lowered: O(1). Only meta.limit changes; tickets at or above it are skipped
-- lazily: claim.lua moves them from the free list to `dropped` when it pops
-- them, release/cancel put them there, the counter stops at the limit, and a
-- claim holding one fails its commit (Postgres checks ticket < limit) and
-- gives it back to `dropped`. Postgres refuses a limit at or below a
-- committed ticket, so no committed use is ever above it.
-- Raised: the tickets set aside in `dropped` below the new limit go back on
-- the free list, at most ARGV[3] per call (the caller and the reconciler call
-- again while some are left); the counter goes on from `next` by itself.
-- Returns {1 applied | 0 stale or same | -1 no state (a rebuild reads the
-- limit from Postgres), tickets still to move}.
local meta, free, dropped = KEYS[1], KEYS[2], KEYS[3]
local new, version, max_moves = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

if redis.call('EXISTS', meta) == 0 then
  return {-1, 0}
end
local cur = tonumber(redis.call('HGET', meta, 'limit'))
local cur_version = tonumber(redis.call('HGET', meta, 'limit_version') or '-1')
local applied = 0
if version > cur_version or (version == cur_version and new ~= cur) then
  redis.call('HSET', meta, 'limit', new, 'limit_version', version)
  redis.call('HINCRBY', meta, 'moves', 1)
  redis.call('HINCRBY', meta, 'dirty', 1)
  applied = 1
end
local limit = tonumber(redis.call('HGET', meta, 'limit'))
local back = redis.call('ZRANGEBYSCORE', dropped, '-inf', '(' .. limit, 'LIMIT', 0, max_moves)
if #back > 0 then
  redis.call('ZREM', dropped, unpack(back))
  redis.call('RPUSH', free, unpack(back))
  redis.call('HINCRBY', meta, 'moves', 1)
end
return {applied, redis.call('ZCOUNT', dropped, '-inf', '(' .. limit)}
