-- install.lua: the last step of loading a code's gate state (create or rebuild).
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free   (the live keys)
-- KEYS[5] staged claims, KEYS[6] staged free  (filled by the caller beforehand)
-- ARGV[1] limit, ARGV[2] next, ARGV[3] '1' = replace live state even if present
-- ARGV[4] status, ARGV[5] starts_ms or '', ARGV[6] ends_ms or '', ARGV[7] status_rev
--         (the operator's controls, see set_status.lua; optional)
--
-- Returns 1 if installed, 0 if live state was already there (another gateway
-- won the race; the staged keys are dropped).
-- Invariant: meta is written last, and claim.lua admits nobody while meta is
-- missing, so a code never admits traffic on half-built state.
local meta, claims, pending, free = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local staged_claims, staged_free = KEYS[5], KEYS[6]
local limit, nxt, force = ARGV[1], ARGV[2], ARGV[3]

if redis.call('EXISTS', meta) == 1 and force ~= '1' then
  redis.call('DEL', staged_claims, staged_free)
  return 0
end
-- Rebuilt state comes from committed rows only: nothing is pending.
redis.call('DEL', claims, pending, free)
if redis.call('EXISTS', staged_claims) == 1 then redis.call('RENAME', staged_claims, claims) end
if redis.call('EXISTS', staged_free) == 1 then redis.call('RENAME', staged_free, free) end
redis.call('DEL', meta)
redis.call('HSET', meta, 'limit', limit, 'next', nxt)
if ARGV[4] then
  redis.call('HSET', meta, 'status', ARGV[4], 'status_rev', ARGV[7] or '0')
  if ARGV[5] ~= '' then redis.call('HSET', meta, 'starts_ms', ARGV[5]) end
  if ARGV[6] ~= '' then redis.call('HSET', meta, 'ends_ms', ARGV[6]) end
end
return 1
