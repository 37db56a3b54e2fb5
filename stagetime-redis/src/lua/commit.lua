-- commit.lua: one transition of a run, all or nothing.
-- Compare-and-set on the stored version, write the record, move the run
-- between state indexes, start or stop its retention clock, enqueue the work
-- the transition causes and acknowledge the work it consumed.
--
-- KEYS: 1 run hash, 2 run's delayed-member set, 3 queue stream, 4 timers zset,
--       5 finished zset, 6 gc hash, 7..11 state indexes (queued, running,
--       succeeded, failed, cancelled), 12 run's logs hash
-- ARGV: 1 expected version, 2 new version, 3 record json, 4 summary json,
--       5 new state, 6 index member, 7 run id, 8 finished score ('' while not
--       finished), 9 retention ms, 10 gc json, 11 consumer group,
--       12 stream max length (0: no cap), 13 number of now items,
--       14 number of delayed items, 15 number of acks, then now items as
--       (run, json) pairs, delayed items as (due ms, member) pairs, and
--       stream entry ids to acknowledge.

-- Calls `cmd key [arg] items...` in chunks (Lua's unpack has a stack limit).
local function chunked(cmd, key, arg, items)
  local step = 1000
  for i = 1, #items, step do
    local j = math.min(i + step - 1, #items)
    if arg then
      redis.call(cmd, key, arg, unpack(items, i, j))
    else
      redis.call(cmd, key, unpack(items, i, j))
    end
  end
end

local STATE_KEY = {queued = 7, running = 8, succeeded = 9, failed = 10, cancelled = 11}

local cur = redis.call('HMGET', KEYS[1], 'v', 's', 'f')
if not cur[1] then
  return {'notfound'}
end
if cur[1] ~= ARGV[1] then
  return {'conflict', cur[1]}
end

local old_state, new_state = cur[2], ARGV[5]
if old_state ~= new_state then
  if old_state and STATE_KEY[old_state] then
    redis.call('ZREM', KEYS[STATE_KEY[old_state]], ARGV[6])
  end
  redis.call('ZADD', KEYS[STATE_KEY[new_state]], 0, ARGV[6])
end

redis.call('HSET', KEYS[1], 'v', ARGV[2], 'rec', ARGV[3], 'sum', ARGV[4], 's', new_state, 'f', ARGV[8])

local i = 16
for _ = 1, tonumber(ARGV[13]) do
  if ARGV[12] == '0' then
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[i], 'w', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[12], '*', 'r', ARGV[i], 'w', ARGV[i + 1])
  end
  i = i + 2
end
local nd = tonumber(ARGV[14])
if nd > 0 then
  local z, s = {}, {}
  for _ = 1, nd do
    z[#z + 1] = ARGV[i]
    z[#z + 1] = ARGV[i + 1]
    -- members are d<nonce>|<run>|<json>: only this run's go to its set
    local a = string.find(ARGV[i + 1], '|', 2, true)
    if a and string.sub(ARGV[i + 1], a + 1, a + #ARGV[7] + 1) == ARGV[7] .. '|' then
      s[#s + 1] = ARGV[i + 1]
    end
    i = i + 2
  end
  chunked('ZADD', KEYS[4], nil, z)
  if #s > 0 then
    chunked('SADD', KEYS[2], nil, s)
  end
end
local na = tonumber(ARGV[15])
if na > 0 then
  local ids, members = {}, {}
  for _ = 1, na do
    ids[#ids + 1] = ARGV[i]
    members[#members + 1] = 'c' .. ARGV[i]
    i = i + 1
  end
  chunked('XACK', KEYS[3], ARGV[11], ids)
  chunked('ZREM', KEYS[4], nil, members)
end

-- retention: runs the clock after the writes above, so every key of the run gets it
local was_finished = cur[3] and cur[3] ~= ''
local finished = ARGV[8] ~= ''
if finished and not was_finished then
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
  redis.call('PEXPIRE', KEYS[12], ARGV[9])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
  redis.call('HSET', KEYS[6], ARGV[7], ARGV[10])
elseif was_finished and not finished then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[12])
  redis.call('ZREM', KEYS[5], ARGV[7])
  redis.call('HDEL', KEYS[6], ARGV[7])
elseif finished and cur[3] ~= ARGV[8] then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
end

return {'ok'}
