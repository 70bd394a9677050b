-- install.lua: the last step of loading a code's gate state (create or rebuild).
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free,
-- KEYS[5] dropped, KEYS[6] owners   (the live keys, as in claim.lua)
-- KEYS[7] staged claims, KEYS[8] staged free, KEYS[9] staged owners
--         (filled by the caller beforehand)
-- ARGV[1] limit, ARGV[2] next, ARGV[3] '1' = replace live state even if present,
-- ARGV[4] limit version (codes.limit_version), ARGV[5] a fresh random epoch
-- ARGV[6] status, ARGV[7] starts_ms or '', ARGV[8] ends_ms or '', ARGV[9] status_rev
--         (the operator's controls, read from Postgres with the limit; see set_status.lua)
--
-- Returns 1 if installed, 0 if live state was already there (another gateway
-- won the race; the staged keys are dropped).
-- Invariant: meta is written last, and claim.lua admits nobody while meta is
-- missing, so a code never admits traffic on half-built state. The epoch
-- changes with every install, so an audit that read the state before it
-- cannot act on the new one (audit.lua); the code is marked for an audit.
local meta, claims, pending, free, dropped, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local staged_claims, staged_free, staged_owners = KEYS[7], KEYS[8], KEYS[9]
local limit, nxt, force, version, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('EXISTS', meta) == 1 and force ~= '1' then
  redis.call('DEL', staged_claims, staged_free, staged_owners)
  return 0
end
-- Rebuilt state comes from committed rows only: nothing is pending.
redis.call('DEL', claims, pending, free, dropped, owners)
if redis.call('EXISTS', staged_claims) == 1 then redis.call('RENAME', staged_claims, claims) end
if redis.call('EXISTS', staged_free) == 1 then redis.call('RENAME', staged_free, free) end
if redis.call('EXISTS', staged_owners) == 1 then redis.call('RENAME', staged_owners, owners) end
-- meta is not deleted (its counters `moves` and `dirty` order the audit), so
-- controls absent from this install are cleared, not inherited.
redis.call('HSET', meta, 'limit', limit, 'next', nxt, 'limit_version', version, 'epoch', epoch)
redis.call('HDEL', meta, 'audit_at', 'status', 'starts_ms', 'ends_ms', 'status_rev')
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('HSET', meta, 'status', ARGV[6], 'status_rev', ARGV[9] or '0')
  if ARGV[7] ~= '' then redis.call('HSET', meta, 'starts_ms', ARGV[7]) end
  if ARGV[8] ~= '' then redis.call('HSET', meta, 'ends_ms', ARGV[8]) end
end
redis.call('HINCRBY', meta, 'moves', 1)
redis.call('HINCRBY', meta, 'dirty', 1)
return 1
