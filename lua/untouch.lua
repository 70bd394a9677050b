-- untouch.lua: the reconciler takes codes it found settled out of the index
-- of touched codes (see touch.lua), each only if its mark is still the one the
-- reconciler read (a newer mark means a newer change: it stays for next pass).
--
-- KEYS[1] touched  zset  (as in touch.lua)
-- ARGV    pairs: code, the score (ms) read at the start of the pass
--
-- Returns how many were removed.
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
