-- ratelimit.lua: one GCRA (generic cell rate algorithm) step for one bucket.
-- One key, one round trip, Redis's own clock: every gateway shares the limit.
--
-- KEYS[1] bucket   string  the bucket's theoretical arrival time (TAT), ms
-- ARGV[1] emission interval (ms): one request's worth of refill (period / burst)
-- ARGV[2] burst: requests allowed back to back on a full bucket (>= 1)
-- ARGV[3] cost: 0 = peek (would one more request pass? nothing is recorded),
--               n >= 1 = take n requests' worth if they fit,
--               n <= -1 = give n requests' worth back (a login that succeeded)
-- ARGV[4] '1' = force: record the cost even when it does not fit (for events
--               that already happened, e.g. a failed code lookup); the TAT is
--               then capped at now + 2 * burst * interval
--
-- Returns {allowed (1|0), retry_after_ms, remaining}
--   retry_after_ms: 0 when allowed, else how long until one request fits
--   remaining: requests that would still fit right now after this step
--
-- Invariant: without force, no window of length burst * interval admits more
-- than burst + (window / interval) requests' worth of cost; the key always
-- expires once its bucket is full again, so idle subjects cost no memory.
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local force = ARGV[4] == '1'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tolerance = interval * burst

local tat = tonumber(redis.call('GET', key) or now)
if tat < now then
  tat = now
end

if cost < 0 then
  -- Never below now: a refund cannot build credit beyond a full bucket.
  local back = math.max(now, tat + interval * cost)
  if back <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%d', back), 'PX', math.max(1, back - now))
  end
  return {1, 0, math.max(0, math.floor((tolerance - (back - now)) / interval))}
end

local function store(new_tat)
  -- The key is worthless once the bucket has refilled: expire it then.
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.max(1, new_tat - now))
end

local function remaining_after(new_tat)
  return math.max(0, math.floor((tolerance - (new_tat - now)) / interval))
end

-- A peek asks about one request without recording it.
local probe = cost
if probe < 1 then
  probe = 1
end
local new_tat = tat + interval * probe
local allow_at = new_tat - tolerance

if now >= allow_at then
  if cost > 0 then
    store(new_tat)
    return {1, 0, remaining_after(new_tat)}
  end
  return {1, 0, remaining_after(new_tat) + 1}
end

if force and cost > 0 then
  new_tat = math.min(new_tat, now + 2 * tolerance)
  store(new_tat)
  return {0, math.max(1, new_tat + interval - tolerance - now), 0}
end
return {0, allow_at - now, 0}
