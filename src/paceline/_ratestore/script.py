"""The Lua script that evaluates :class:`~paceline.policy.limits.LimitPolicy` on Redis.

One script call is one decision, atomic across every limit and unit of a limiter, on the Redis
server's clock (``TIME``, never a client's; ``now = max(TIME, last now)`` so a backward step of
the server's clock only makes windows stricter). It mirrors the policy line by line
(docs/design.md, 'Shared limit store'):

- each limit is a sliding-window log: a sorted set of entries (score: the stamp, member: an id)
  and a hash of each entry's count; entries closer than ``coalesce`` to the newest one join it
  (the policy's bound on memory for huge limits); a stamp earlier than the newest entry joins it;
- an entry is stamped with the *latest* moment its grant may start: its slot plus the margin
  of the client that booked it (each client measures its own). A window of W then counts every
  entry stamped after ``t - W``, whatever margin each was booked with: two grants can start
  within W of each other only if the later slot comes less than W after the earlier's latest
  start. (Stamping slots and lengthening the window by the booking client's margin would miss
  an entry of a client with a larger margin than its own.) With one margin for all, this is
  the policy's log with windows of W + margin, shifted by the margin;
- an optional GCRA pacer per limit (``burst``) keeps its theoretical arrival time in the meta
  hash and forgives up to one interval of lateness for a grant that waited;
- ``reserve`` *books*: when the grant cannot go now it is charged at the earliest slot every
  limit allows (``now + wait``, as the policy would grant it then) and the wait is returned, so
  a caller needs one round trip per grant and never polls;
- ``settle`` gives back the unused part of a grant's entry, or charges an overrun from the first
  moment its limit has room for it (in chunks of at most N), exactly as ``LimitPolicy.settle``;
- the keys live as long as their newest entry (and a pause or an exhausted mark) can matter,
  whatever the call, and entry ids never run behind the clock, so an id a client kept from
  before the keys expired (or a Redis restarted empty) names no new entry.

Time is in integer *ticks* (microseconds in production: Lua numbers are doubles, exact to 2^53;
microseconds since 1970 are about 2^51). Tests pass ``now`` and their own tick scale to compare
the script with the policy on the same schedules.

A *fence* protects against a Redis that lost its bookings: when the meta hash is missing and the
server started less than one window ago, or the server's ``run_id`` changed (a failover), no
grant goes before one (longest) window has passed since the start or the change.

KEYS: meta hash, then per limit: its sorted set, its hash of counts.
KEYS may end with the live processes' sorted set (member: a process id, score: when the store
last saw it).
ARGV: op ("r" reserve and book, "t" try without booking, "s" settle, "p" pause, "x" quota
exhausted, "l" a limit learned from a server's headers), now (ticks;
"" reads TIME), ticks per second, fence (1/0, then optionally ":" and a process id: a
heartbeat in the live set), limit count L, then per limit 7 numbers: N,
window, this caller's margin, prune window (entries stamped earlier than now minus it are
dropped; at least the window), coalesce, GCRA interval (0: no pacer), GCRA tolerance; then
for "r"/"t" L amounts; for "s" per
limit: entry id, reserved amount, actual amount; for "p" the pause length in ticks; for "x"
how long to hold every grant (ticks) and why (text, kept in the meta hash's ``why``); for "l"
N, W (ticks) and the index (from 1) of the requests limit whose log counts it (every later
"r"/"t" of any process then also keeps N per W on that log: :mod:`.learned`). "r" may
add, per limit, the entry id and amount of a late booking to give back first (one round trip
for the give-back and the new booking).
Replies: "r"/"t": {wait, now, id per limit (0: not charged), then with a heartbeat k: the
processes the live set holds}, or {-1, now, until, why} while
the key's quota is marked exhausted; "s" and "l": {0, now}; "p": {pause end, now}; "x": {its
end, now}.
"""

from __future__ import annotations

LUA = r"""
local meta = KEYS[1]
local op = ARGV[1]
local tps = tonumber(ARGV[3])
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * tps + math.floor(tonumber(t[2]) * tps / 1000000)
else
  now = tonumber(ARGV[2])
end
local last = tonumber(redis.call('HGET', meta, 'last') or '0')
if last > now then now = last end

local L = tonumber(ARGV[5])
local lim = {}
local longest = 0
for i = 1, L do
  local b = 5 + (i - 1) * 7
  lim[i] = {n = tonumber(ARGV[b + 1]), w = tonumber(ARGV[b + 2]), j = tonumber(ARGV[b + 3]),
            pw = tonumber(ARGV[b + 4]), co = tonumber(ARGV[b + 5]), iv = tonumber(ARGV[b + 6]),
            tol = tonumber(ARGV[b + 7]), z = KEYS[2 * i], c = KEYS[2 * i + 1]}
  if lim[i].pw + lim[i].j > longest then longest = lim[i].pw + lim[i].j end
end
local rest = 5 + L * 7
-- A limit learned from a server's headers by any process on the key (op "l", learned.py):
-- N per W counted on the log of the requests limit li, for every process; that log is kept
-- for W at least.
local learned = false
local lf = redis.call('HMGET', meta, 'ln', 'lw', 'li')
if lf[1] then
  local li = tonumber(lf[3])
  if li >= 1 and li <= L then
    local b = lim[li]
    learned = {n = tonumber(lf[1]), w = tonumber(lf[2]), j = b.j, co = b.co, iv = 0, tol = 0,
               z = b.z, c = b.c, i = li}
    if learned.w > b.pw then b.pw = learned.w end
    learned.pw = b.pw
    if b.pw + b.j > longest then longest = b.pw + b.j end
  end
end
-- ARGV[4]: the fence flag, then (":" and an id) a process's heartbeat (degraded mode's k)
local fence_on = string.sub(ARGV[4], 1, 1) == '1'
local me = string.sub(ARGV[4], 3)

-- Fence: bookings may have been lost (restart without them, or failover).
local fence = tonumber(redis.call('HGET', meta, 'fence') or '0')
if fence_on then
  local info = redis.call('INFO', 'server')
  local run = string.match(info, 'run_id:(%w+)')
  local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  local known = redis.call('HGET', meta, 'run')
  if known == false then
    -- uptime reads 1 right after a start: the start may be up to 1 s later than it says.
    local f = now - up * tps + tps + longest
    if f > now and f > fence then fence = f end
  elseif known ~= run then
    if now + longest > fence then fence = now + longest end
  end
  if known ~= run then redis.call('HSET', meta, 'run', run) end
end

-- Heartbeat: this process was seen now; k = processes seen within the live horizon (three of
-- the longest windows, at least 10 s: a process waiting out a Retry-After of a few seconds
-- still counts). One sorted set under the same hash tag; no extra round trip.
local live_n = 0
local live = KEYS[2 * L + 2]
if me ~= '' and live then
  local horizon = 3 * longest
  if horizon < 10 * tps then horizon = 10 * tps end
  redis.call('ZADD', live, now, me)
  redis.call('ZREMRANGEBYSCORE', live, '-inf', now - horizon)
  redis.call('PEXPIRE', live, math.ceil(horizon * 1000 / tps))
  live_n = redis.call('ZCARD', live)
end

local function held(l, t)
  -- prune what no caller's window holds any more, then count this caller's window at t
  local cut = now - l.pw
  local old = redis.call('ZRANGEBYSCORE', l.z, '-inf', cut)
  if #old > 0 then
    local counts = redis.call('HMGET', l.c, unpack(old))
    local sum = 0
    for j = 1, #counts do sum = sum + tonumber(counts[j] or '0') end
    redis.call('ZREMRANGEBYSCORE', l.z, '-inf', cut)
    redis.call('HDEL', l.c, unpack(old))
    redis.call('HINCRBY', meta, 'h' .. l.i, -sum)
  end
  local h = tonumber(redis.call('HGET', meta, 'h' .. l.i) or '0')
  local gone = redis.call('ZRANGEBYSCORE', l.z, '-inf', t - l.w)
  if #gone > 0 then
    local counts = redis.call('HMGET', l.c, unpack(gone))
    for j = 1, #counts do h = h - tonumber(counts[j] or '0') end
  end
  return h
end

local function wait_log(l, t, amount)
  local excess = held(l, t) + amount - l.n
  if excess <= 0 then return 0 end
  local freed = 0
  local start = 0
  -- The window's edge, written exactly: `..` would format it with Lua's "%.14g", and today's
  -- microseconds have 16 digits, so the edge moved by up to 50 us; moved back, the entries
  -- below began with one held() had already left out, and the wait came out one entry short
  -- (a 201st start in a second under load, issue 15's "cause B"). A number argument is exact
  -- (Redis writes it with "%.17g").
  local edge = string.format('(%.0f', t - l.w)
  while true do
    local batch = redis.call('ZRANGEBYSCORE', l.z, edge, '+inf', 'WITHSCORES', 'LIMIT', start, 64)
    if #batch == 0 then return l.w end  -- unreachable: amount <= N frees enough
    local counts = {}
    for j = 1, #batch, 2 do counts[#counts + 1] = batch[j] end
    local cs = redis.call('HMGET', l.c, unpack(counts))
    for j = 1, #cs do
      freed = freed + tonumber(cs[j] or '0')
      if freed >= excess then return tonumber(batch[2 * j]) + l.w - t end
    end
    start = start + 64
  end
end

local function wait_pacer(l, t)
  if l.iv == 0 then return 0 end
  local tat = redis.call('HGET', meta, 'tat' .. l.i)
  if tat == false then return 0 end
  local w = tonumber(tat) - l.tol - t
  if w > 0 then return w end
  return 0
end

local function record_pacer(l, t, amount, waited)
  if l.iv == 0 then return end
  local tat = redis.call('HGET', meta, 'tat' .. l.i)
  local base
  if tat == false then
    base = t
  else
    tat = tonumber(tat)
    local floor = t
    if waited then floor = t - (l.iv - 1) end
    if tat > floor then base = tat else base = floor end
  end
  redis.call('HSET', meta, 'tat' .. l.i, base + l.iv * amount)
end

local function record_log(l, slot, amount)
  local t = slot + l.j  -- the latest start: what every window counts
  local newest = redis.call('ZRANGE', l.z, -1, -1, 'WITHSCORES')
  redis.call('HINCRBY', meta, 'h' .. l.i, amount)
  if #newest > 0 and t - tonumber(newest[2]) < l.co then
    if t > tonumber(newest[2]) then redis.call('ZADD', l.z, t, newest[1]) end
    redis.call('HINCRBY', l.c, newest[1], amount)
    return tonumber(newest[1])
  end
  -- Ids never run behind the clock: a key that expired (or a Redis restarted empty) starts
  -- again at now, above every id issued before, unless those came faster than one a tick
  -- for longer than the keys outlive their newest entry (>= W). A client still holding an
  -- old id (a late give-back, a long call's settle) then finds no entry, instead of taking
  -- an unrelated new entry's count.
  local id = redis.call('HINCRBY', meta, 'seq', 1)
  if id < now then
    id = now
    redis.call('HSET', meta, 'seq', id)
  end
  redis.call('ZADD', l.z, t, id)
  redis.call('HSET', l.c, id, amount)
  return id
end

local function give_back(l, id, amount)
  local count = redis.call('HGET', l.c, id)
  if count == false then return end
  count = tonumber(count)
  local removed = math.min(amount, count)
  redis.call('HINCRBY', meta, 'h' .. l.i, -removed)
  if count == removed then
    redis.call('HDEL', l.c, id)
    redis.call('ZREM', l.z, id)
  else
    redis.call('HSET', l.c, id, count - removed)
  end
end

local pause = tonumber(redis.call('HGET', meta, 'pause') or '0')
local exhausted = tonumber(redis.call('HGET', meta, 'exhausted') or '0')

local function keep(until_t)
  -- keys live as long as their newest entry, a pause or an exhausted quota can matter, plus a
  -- second. The newest entry is read, not assumed to be this call's: a settle, a pause or a
  -- refused try (until_t = now), or a booking that fits before others' slots, must not
  -- shorten the life of an entry booked further ahead (its keys would expire before its slot,
  -- and the next booking would find an empty log).
  for i = 1, L do
    local newest = redis.call('ZRANGE', lim[i].z, -1, -1, 'WITHSCORES')
    if #newest > 0 and tonumber(newest[2]) > until_t then until_t = tonumber(newest[2]) end
  end
  if pause > until_t then until_t = pause end
  if exhausted > until_t then until_t = exhausted end
  local ms = math.ceil((until_t - now + longest) * 1000 / tps) + 1000
  redis.call('HSET', meta, 'last', now)
  if fence > now then redis.call('HSET', meta, 'fence', fence) end
  redis.call('PEXPIRE', meta, ms)
  for i = 1, L do
    redis.call('PEXPIRE', lim[i].z, ms)
    redis.call('PEXPIRE', lim[i].c, ms)
  end
end

for i = 1, L do lim[i].i = i end

if op == 'r' or op == 't' then
  if #ARGV >= rest + 3 * L then
    -- a late booking of this caller, returned in the same call that books its replacement
    for i = 1, L do
      local id, amount = ARGV[rest + L + 2 * i - 1], tonumber(ARGV[rest + L + 2 * i])
      if amount > 0 and id ~= '0' then give_back(lim[i], id, amount) end
    end
  end
  if exhausted > now then
    -- a process sharing the key was told the quota is exhausted: nothing is granted
    keep(now)
    return {-1, now, exhausted, redis.call('HGET', meta, 'why') or ''}
  end
  local amounts = {}
  local wait = 0
  if fence - now > wait then wait = fence - now end
  if pause - now > wait then wait = pause - now end
  for i = 1, L do
    amounts[i] = tonumber(ARGV[rest + i])
    if amounts[i] > 0 then
      local w = wait_pacer(lim[i], now)
      if w > wait then wait = w end
      w = wait_log(lim[i], now, amounts[i])
      if w > wait then wait = w end
    end
  end
  if learned and amounts[learned.i] > 0 then
    local w = wait_log(learned, now, amounts[learned.i])
    if w > wait then wait = w end
  end
  if wait > 0 and op == 't' then
    keep(now)
    return {wait, now}
  end
  local t = now + wait
  local reply = {wait, now}
  for i = 1, L do
    local id = 0
    if amounts[i] > 0 then
      record_pacer(lim[i], t, amounts[i], wait > 0)
      id = record_log(lim[i], t, amounts[i])
    end
    reply[#reply + 1] = id
  end
  if live_n > 0 then reply[#reply + 1] = live_n end
  keep(t)
  return reply
elseif op == 's' then
  local newest = now
  for i = 1, L do
    local l = lim[i]
    local b = rest + (i - 1) * 3
    local id, reserved, actual = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local delta = actual - reserved
    if delta < 0 and id ~= '0' then
      give_back(l, id, -delta)
    elseif delta > 0 then
      record_pacer(l, now, delta, false)
      local left = delta
      while left > 0 do
        local chunk = math.min(left, l.n)
        local t = now + wait_log(l, now, chunk)
        record_log(l, t, chunk)
        if t > newest then newest = t end
        left = left - chunk
      end
    end
  end
  keep(newest)
  return {0, now}
elseif op == 'p' then
  local till = now + tonumber(ARGV[rest + 1])
  if till > pause then
    pause = till
    redis.call('HSET', meta, 'pause', pause)
  end
  keep(now)
  return {pause, now}
elseif op == 'x' then
  local till = now + tonumber(ARGV[rest + 1])
  if till > exhausted then
    exhausted = till
    redis.call('HSET', meta, 'exhausted', exhausted, 'why', ARGV[rest + 2])
  end
  keep(now)
  return {exhausted, now}
elseif op == 'l' then
  -- learned.py: the server's N per W (ticks) on the requests limit li; the newest word wins
  local n, w, li = tonumber(ARGV[rest + 1]), tonumber(ARGV[rest + 2]), tonumber(ARGV[rest + 3])
  redis.call('HSET', meta, 'ln', n, 'lw', w, 'li', li)
  if li >= 1 and li <= L and w + lim[li].j > longest then longest = w + lim[li].j end
  keep(now)
  return {0, now}
end
return redis.error_reply('paceline rate store: unknown op ' .. tostring(op))
"""
