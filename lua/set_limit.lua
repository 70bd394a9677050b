-- set_limit.lua: change a code's limit in the gate, at once.
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] free   (as in claim.lua)
-- ARGV[1] the new limit (Postgres already holds it)
--
-- Lowered: tickets at or above it are not handed out again, and claims that
-- hold one fail their commit (Postgres checks ticket < limit) and drop it.
-- Raised: tickets between the old limit and the counter that nobody holds
-- (dropped while the limit was lower) go back on the free list, so the code
-- admits exactly the new limit.
-- Returns 1, or 0 when the code has no state (a rebuild reads the limit from Postgres).
local meta, claims, free = KEYS[1], KEYS[2], KEYS[3]
local new = tonumber(ARGV[1])

if redis.call('EXISTS', meta) == 0 then
  return 0
end
local old = tonumber(redis.call('HGET', meta, 'limit'))
local nxt = tonumber(redis.call('HGET', meta, 'next') or '0')
redis.call('HSET', meta, 'limit', new)
local top = math.min(nxt, new)
if new > old and top > old then
  local held = {}
  for _, t in ipairs(redis.call('HVALS', claims)) do held[tonumber(t)] = true end
  for _, t in ipairs(redis.call('LRANGE', free, 0, -1)) do held[tonumber(t)] = true end
  for t = old, top - 1 do
    if not held[t] then redis.call('RPUSH', free, t) end
  end
end
return 1
