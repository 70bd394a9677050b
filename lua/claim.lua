-- claim.lua: admit one user to one code, or say why not. One atomic step.
--
-- KEYS[1] meta     hash  {limit, next, ...}: next = first ticket never handed out;
--                        {status, starts_ms, ends_ms, status_rev}: the operator's
--                        controls, written by set_status.lua / install.lua
--                        (absent: active, no bound); the other fields: see
--                        install.lua and audit.lua
-- KEYS[2] claims   hash  holder -> ticket (pending or committed; -1: committed,
--                        ticket not tracked here, see release.lua 'keep')
-- KEYS[3] pending  zset  holder -> claim time (ms); removed once committed
-- KEYS[4] free     list  tickets given back (failed commits, cancels, audits)
-- KEYS[5] stats    hash  rejection counters by reason
-- KEYS[6] dropped  zset  tickets at or above a lowered limit, kept aside (score =
--                        ticket) so that a raise gives them back (set_limit.lua)
-- KEYS[7] owners   hash  ticket -> holder: the reverse of claims, so a cancel
--                        and the audit can tell whether a ticket is held
-- ARGV[1] holder: a user id (credit codes, vouchers) or an order (coupons)
-- ARGV[2] grace period (ms): a claim pending for longer is presumed abandoned
-- ARGV[3] optional: the deadline (Redis ms) of the touch mark that covers this
--         claim (src/redemption/touched.rs); past it nothing is taken
--
-- Returns {1, ticket} claimed | {2} already claimed by this user | {3} sold out
--       | {4} state missing (Redis lost it; the caller answers 503 and rebuilds)
--       | {5, ticket} this user's claim has been pending past the grace period
--         (its gateway probably died): the caller settles it against Postgres
--       | {6, reason} the code is paused / ended / not started / expired
--         (1 / 2 / 3 / 4), by Redis's clock: nothing taken
--       | {7} the touch mark's deadline has passed: mark afresh, then claim
--
-- Invariant: every ticket handed out is in [0, limit) and held by at most one
-- holder at a time; a holder holds at most one ticket per code; claims and
-- owners are each other's reverse. A ticket popped at or above the limit moves
-- to `dropped`, never vanishes. All keys share the hash tag {code}, so this
-- also runs on Redis Cluster.
local meta, claims, pending, free, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local dropped, owners = KEYS[6], KEYS[7]
local user, grace_ms = ARGV[1], tonumber(ARGV[2])

local limit = tonumber(redis.call('HGET', meta, 'limit'))
if not limit then
  return {4}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
-- A claim runs only under a fresh mark in the reconciler's index of touched
-- codes, so a gateway that dies holding it has left the code there.
if ARGV[3] and now_ms > tonumber(ARGV[3]) then return {7} end

-- The operator's controls bind here on every gateway at once, whatever a
-- gateway's cache still believes (the commit checks them again, by the
-- database's clock).
local control = redis.call('HMGET', meta, 'status', 'starts_ms', 'ends_ms')
if control[1] == 'paused' then return {6, 1} end
if control[1] == 'ended' then return {6, 2} end
if control[2] and now_ms < tonumber(control[2]) then return {6, 3} end
if control[3] and now_ms >= tonumber(control[3]) then return {6, 4} end

local held = redis.call('HGET', claims, user)
if held then
  local since = redis.call('ZSCORE', pending, user)
  if since and now_ms - tonumber(since) > grace_ms then
    return {5, tonumber(held)}
  end
  redis.call('HINCRBY', stats, 'already_redeemed', 1)
  return {2}
end

local ticket
while true do
  local t = redis.call('LPOP', free)
  if not t then break end
  if tonumber(t) < limit then ticket = tonumber(t); break end
  -- At or above a lowered limit: set aside until a raise (set_limit.lua).
  redis.call('ZADD', dropped, t, t)
end
if not ticket then
  local nxt = tonumber(redis.call('HGET', meta, 'next') or '0')
  if nxt < limit then
    ticket = nxt
    redis.call('HSET', meta, 'next', nxt + 1)
  end
end
if not ticket then
  redis.call('HINCRBY', stats, 'sold_out', 1)
  return {3}
end

redis.call('HSET', claims, user, ticket)
redis.call('HSET', owners, ticket, user)
redis.call('ZADD', pending, now_ms, user)
return {1, ticket}
