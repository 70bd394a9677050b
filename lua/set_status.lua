-- set_status.lua: the operator's controls of a code (status and window) in
-- its gate state, so claim.lua refuses at once on every gateway.
--
-- KEYS[1] meta   (as in claim.lua)
-- ARGV[1] status: active | paused | ended
-- ARGV[2] starts_ms or '' (no lower bound), ARGV[3] ends_ms or '' (no upper bound)
-- ARGV[4] status_rev: the code row's control_rev in Postgres (the changing
--         transaction's id, so later changes carry larger numbers)
--
-- Returns 1 if written, 0 if the code has no state (a rebuild writes the
-- controls from Postgres) or if a later change was written already.
-- Invariant: the controls in Redis only ever move forward in Postgres's
-- order of changes, so a slow writer (a reconciler pass that read the row
-- before a pause) never undoes a pause.
local meta = KEYS[1]
local status, starts, ends, rev = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

if redis.call('EXISTS', meta) == 0 then
  return 0
end
local current = tonumber(redis.call('HGET', meta, 'status_rev') or '-1')
if rev < current then
  return 0
end
redis.call('HSET', meta, 'status', status, 'status_rev', ARGV[4])
if starts == '' then redis.call('HDEL', meta, 'starts_ms') else redis.call('HSET', meta, 'starts_ms', starts) end
if ends == '' then redis.call('HDEL', meta, 'ends_ms') else redis.call('HSET', meta, 'ends_ms', ends) end
return 1
