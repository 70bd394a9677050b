-- audit.lua: the last, atomic step of the reconciler's ticket audit of one
-- range of a code's tickets (src/reconciler/audit.rs reads and decides; this
-- re-checks and acts).
--
-- KEYS[1] meta, KEYS[2] claims, KEYS[3] pending, KEYS[4] free,
-- KEYS[5] dropped, KEYS[6] owners  (as in claim.lua)
-- ARGV[1] meta.epoch and ARGV[2] meta.moves as read before anything else
-- ARGV[3] the range cursor to store ('' = the sweep of this code is done)
-- ARGV[4] 'dirty:slot_changes' marks to record when the sweep starts, or ''
-- then five lists, each a count followed by its items:
--   unhold   (ticket, holder): owners/claims entries of a holder that is not
--            pending and has no live row with that ticket (a stale claim)
--   restore  (holder, ticket): a committed row whose holder has no claim
--            (or -1): record it, so the gate answers "already redeemed"
--   purge    ticket: committed in Postgres but on the free list: take it off
--   dedupe   ticket: on the free list more than once: keep one
--   free     ticket: in [0, min(next, limit)), held by no row, no claim and
--            not free: give it back
--
-- Returns {1, freed, fixed} | {0} when the state moved since it was read (the
-- caller tries again later; nothing was done).
--
-- Why nothing held is freed (the argument; see also audit.rs):
--  * Every ticket leaves the free list or the counter only through claim.lua,
--    which records claims[holder] and owners[ticket] in the same step. Every
--    other change (release, cancel, set_limit, install, this script) bumps
--    meta.moves or changes meta.epoch. The caller read moves and epoch first,
--    then the free list, then owners/claims/pending, then Postgres; so if
--    both are unchanged here, the only things that happened since are claims
--    (which can take a ticket only from the free list, or at or above the
--    `next` it read) and confirms (pending -> committed).
--  * A ticket offered for `free` was, when read, below `next`, not on the
--    free list and not owned; with no push since, no claim can have taken it
--    after that read. Any claim that took it before had recorded its owner
--    (seen, so not offered) unless released (a move) — so no pending claim
--    holds it. Its absence from Postgres was read after that, and a commit
--    needs a claim of the ticket, so no commit of it is in flight or can
--    start: freeing it hands out a ticket nobody holds. It is re-checked
--    here all the same (owned, free, dropped, below next and limit), which
--    also covers a Redis that lost its last writes in between.
--  * unhold/restore/purge/dedupe compare the entries they change, and a
--    cancel that could make a purged ticket free again bumps moves.
-- Invariant kept: claims and owners stay each other's reverse; a ticket
-- is given back at most once; meta.audited records the change marks the
-- sweep started from, so changes during a sweep call for another one.
local meta, claims, pending, free, dropped, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

if (redis.call('HGET', meta, 'epoch') or '') ~= ARGV[1]
  or (redis.call('HGET', meta, 'moves') or '0') ~= ARGV[2] then
  return {0}
end
local limit = tonumber(redis.call('HGET', meta, 'limit'))
local nxt = tonumber(redis.call('HGET', meta, 'next') or '0')
local fixed, freed = 0, 0
local i = 5

local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local ticket, holder = ARGV[i], ARGV[i + 1]; i = i + 2
  if redis.call('HGET', owners, ticket) == holder and not redis.call('ZSCORE', pending, holder) then
    redis.call('HDEL', owners, ticket)
    if redis.call('HGET', claims, holder) == ticket then redis.call('HDEL', claims, holder) end
    fixed = fixed + 1
  end
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local holder, ticket = ARGV[i], ARGV[i + 1]; i = i + 2
  local cur = redis.call('HGET', claims, holder)
  if (not cur or cur == '-1') and redis.call('HEXISTS', owners, ticket) == 0 then
    redis.call('HSET', claims, holder, ticket)
    redis.call('HSET', owners, ticket, holder)
    fixed = fixed + 1
  end
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  fixed = fixed + redis.call('LREM', free, 0, ARGV[i]); i = i + 1
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local removed = redis.call('LREM', free, 0, ARGV[i])
  if removed > 1 then fixed = fixed + removed - 1 end
  if removed > 0 then redis.call('LPUSH', free, ARGV[i]) end
  i = i + 1
end

n = tonumber(ARGV[i]); i = i + 1
if n > 0 and limit then
  -- The free-list re-check reads the list; past 100,000 entries that would
  -- hold Redis too long, and the moves guard above already says no ticket
  -- was pushed since the caller read the list (this re-check only adds cover
  -- for a Redis that lost writes in between).
  local on_list = {}
  if redis.call('LLEN', free) <= 100000 then
    for _, t in ipairs(redis.call('LRANGE', free, 0, -1)) do on_list[t] = true end
  end
  for _ = 1, n do
    local ticket = ARGV[i]; i = i + 1
    local t = tonumber(ticket)
    if t < limit and t < nxt and not on_list[ticket]
      and redis.call('HEXISTS', owners, ticket) == 0 and not redis.call('ZSCORE', dropped, ticket) then
      redis.call('LPUSH', free, ticket)
      on_list[ticket] = true
      freed = freed + 1
    end
  end
end

if ARGV[4] ~= '' then
  local marks = {}
  for m in string.gmatch(ARGV[4], '[^:]+') do marks[#marks + 1] = m end
  redis.call('HSET', meta, 'audit_target', marks[1], 'audit_target_pg', marks[2])
end
if ARGV[3] == '' then
  redis.call('HDEL', meta, 'audit_at')
  local target = redis.call('HGET', meta, 'audit_target')
  local target_pg = redis.call('HGET', meta, 'audit_target_pg')
  if target then redis.call('HSET', meta, 'audited', target) end
  if target_pg then redis.call('HSET', meta, 'audited_pg', target_pg) end
else
  redis.call('HSET', meta, 'audit_at', ARGV[3])
end
if freed + fixed > 0 then
  redis.call('HINCRBY', meta, 'moves', 1)
end
return {1, freed, fixed}
