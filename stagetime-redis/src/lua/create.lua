-- create.lua: store a new run and enqueue its start work, atomically.
-- Idempotent on the run id: when the run exists nothing is written and its
-- record is returned.
--
-- KEYS: 1 run hash, 2 run's delayed-member set, 3 queue stream, 4 timers zset,
--       5 finished zset, 6 gc hash, 7.. listing indexes the run joins
-- ARGV: 1 version, 2 record json, 3 summary json, 4 state, 5 index member,
--       6 run id, 7 finished score ('' while not finished), 8 retention ms,
--       9 gc json, 10 stream max length (0: no cap), 11 number of now items,
--       12 number of delayed items, then now items as (run, json) pairs and
--       delayed items as (due ms, member) pairs.

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

local existing = redis.call('HGET', KEYS[1], 'rec')
if existing then
  return {'exists', existing}
end

redis.call('HSET', KEYS[1], 'v', ARGV[1], 'rec', ARGV[2], 'sum', ARGV[3], 's', ARGV[4], 'f', ARGV[7])
for k = 7, #KEYS do
  redis.call('ZADD', KEYS[k], 0, ARGV[5])
end
if ARGV[7] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
  redis.call('HSET', KEYS[6], ARGV[6], ARGV[9])
end

local i = 13
for _ = 1, tonumber(ARGV[11]) do
  if ARGV[10] == '0' then
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[i], 'w', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*', 'r', ARGV[i], 'w', ARGV[i + 1])
  end
  i = i + 2
end
local nd = tonumber(ARGV[12])
if nd > 0 then
  local z, s = {}, {}
  for _ = 1, nd do
    z[#z + 1] = ARGV[i]
    z[#z + 1] = ARGV[i + 1]
    -- members are d<nonce>|<run>|<json>: only this run's go to its set
    local a = string.find(ARGV[i + 1], '|', 2, true)
    if a and string.sub(ARGV[i + 1], a + 1, a + #ARGV[6] + 1) == ARGV[6] .. '|' then
      s[#s + 1] = ARGV[i + 1]
    end
    i = i + 2
  end
  chunked('ZADD', KEYS[4], nil, z)
  if #s > 0 then
    chunked('SADD', KEYS[2], nil, s)
  end
end
return {'created'}
