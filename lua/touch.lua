-- touch.lua: mark a code in the reconciler's index of codes whose gate state
-- changed (or is about to), so a pass visits those codes instead of every one.
--
-- KEYS[1] touched  zset  code -> Redis time (ms) of its latest mark
--                        (one key per prefix, outside the codes' hash tags)
-- ARGV[1] the code
--
-- Returns the mark's time (ms).
-- Invariant: a mark's score only moves forward (GT), so the reconciler's
-- compare-and-remove (untouch.lua) never removes a mark newer than the one it
-- read. The gateway writes a mark BEFORE a claim (throttled: a mark covers the
-- claims this gateway sends within TOUCH_EVERY after it, see
-- src/redemption/touched.rs), so a gateway that dies after claiming has always
-- left the code in the index.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
return now
