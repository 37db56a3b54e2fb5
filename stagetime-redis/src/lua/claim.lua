-- claim.lua: hand up to `max` work items to one consumer, in one step.
--  1. timers that are due at `now`: delayed items are promoted to the stream,
--     claims whose deadline passed are taken over (XCLAIM) from the consumer
--     that did not acknowledge them in time;
--  2. (periodically) entries idle for the reclaim time by the server's clock
--     are taken over with XAUTOCLAIM, a backstop for claims without deadline;
--  3. new entries are read with XREADGROUP (the group is created when missing);
--  4. every entry handed out gets a deadline `c<id>` in the timers zset;
--  5. (periodically) the stream is trimmed below the oldest entry still
--     pending or undelivered (XTRIM MINID), so acknowledged work goes.
-- When nothing is handed out it returns when to look again: the earliest
-- timer and the stream's last entry id (for a blocking XREAD after it).
--
-- KEYS: 1 queue stream, 2 timers zset
-- ARGV: 1 group, 2 consumer, 3 max, 4 now ms, 5 deadline ms,
--       6 stream max length (0: no cap), 7 XAUTOCLAIM min idle ms ('': skip),
--       8 trim ('1': trim now)
-- Returns {n, next timer score or '', last stream id or '', {id, deliveries, json, ...}}
local stream, timers, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local out, claimed = {}, {}
local n = 0

local function emit(id, deliveries, fields)
  local w = ''
  if fields then
    for j = 1, #fields, 2 do
      if fields[j] == 'w' then
        w = fields[j + 1]
      end
    end
  end
  out[#out + 1] = id
  out[#out + 1] = deliveries
  out[#out + 1] = w
  claimed[#claimed + 1] = id
  n = n + 1
end

local function deliveries(id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] then
    return p[1][4]
  end
  return 1
end

local function ensure_group()
  local r = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(r.err)
  end
end

-- 1. due timers
local due = redis.call('ZRANGEBYSCORE', timers, '-inf', ARGV[4], 'LIMIT', 0, max)
if #due > 0 then
  local reclaim = {}
  for _, m in ipairs(due) do
    if string.byte(m, 1) == 100 then -- 'd': d<nonce>|<run>|<json>
      local a = string.find(m, '|', 2, true)
      local b = a and string.find(m, '|', a + 1, true)
      if b then
        if ARGV[6] == '0' then
          redis.call('XADD', stream, '*', 'r', string.sub(m, a + 1, b - 1), 'w', string.sub(m, b + 1))
        else
          redis.call('XADD', stream, 'MAXLEN', '~', ARGV[6], '*', 'r', string.sub(m, a + 1, b - 1), 'w', string.sub(m, b + 1))
        end
      end
    else -- 'c': c<entry id>, a claim whose deadline passed
      reclaim[#reclaim + 1] = string.sub(m, 2)
    end
  end
  redis.call('ZREM', timers, unpack(due))
  if #reclaim > 0 then
    local got = redis.pcall('XCLAIM', stream, group, consumer, 0, unpack(reclaim))
    if type(got) == 'table' and not got.err then
      for _, e in ipairs(got) do
        if e and e[1] then
          emit(e[1], deliveries(e[1]), e[2])
        end
      end
    end
  end
end

-- 2. backstop: entries idle (server clock) for the reclaim time
if ARGV[7] ~= '' and n < max then
  local r = redis.pcall('XAUTOCLAIM', stream, group, consumer, ARGV[7], '0-0', 'COUNT', max - n)
  if type(r) == 'table' and not r.err then
    for _, e in ipairs(r[2]) do
      if e and e[1] then
        emit(e[1], deliveries(e[1]), e[2])
      end
    end
  end
end

-- 3. new entries
if n < max then
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP', 1, true) then
      return redis.error_reply(r.err)
    end
    local e = ensure_group()
    if e then
      return e
    end
    r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n, 'STREAMS', stream, '>')
  end
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do
      emit(e[1], 1, e[2])
    end
  end
end

-- 4. deadlines of what is handed out
if n > 0 then
  local z = {}
  for _, id in ipairs(claimed) do
    z[#z + 1] = ARGV[5]
    z[#z + 1] = 'c' .. id
  end
  redis.call('ZADD', timers, unpack(z))
end

-- 5. trim what every consumer is done with
if ARGV[8] == '1' then
  local info = redis.pcall('XINFO', 'GROUPS', stream)
  local last_delivered = nil
  if type(info) == 'table' and not info.err then
    for _, g in ipairs(info) do
      local name, ld = nil, nil
      for j = 1, #g, 2 do
        if g[j] == 'name' then
          name = g[j + 1]
        elseif g[j] == 'last-delivered-id' then
          ld = g[j + 1]
        end
      end
      if name == group then
        last_delivered = ld
      end
    end
  end
  if last_delivered and last_delivered ~= '0-0' then
    local p = redis.call('XPENDING', stream, group)
    local minid = last_delivered
    if p[1] > 0 and p[2] then
      minid = p[2]
    end
    redis.call('XTRIM', stream, 'MINID', minid)
  end
end

if n == 0 then
  local t = redis.call('ZRANGE', timers, 0, 0, 'WITHSCORES')
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local last_id = '0-0'
  if last[1] then
    last_id = last[1][1]
  end
  return {0, t[2] or '', last_id, {}}
end
return {n, '', '', out}
