-- purge.lua: delete finished runs whose retention ended at or before `now`,
-- with their listing-index entries, their pending delayed work and their
-- attempt logs.
--
-- KEYS: 1 finished zset, 2 gc hash, 3 timers zset
-- ARGV: 1 now ms, 2 at most this many runs, 3 key prefix of run hashes
--       ("<prefix>run:{"; the run id and "}" follow)
-- Returns how many runs went.

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

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local gc = redis.call('HGET', KEYS[2], id)
  if gc then
    local ok, info = pcall(cjson.decode, gc)
    if ok and type(info) == 'table' and type(info.k) == 'table' then
      for _, key in ipairs(info.k) do
        redis.call('ZREM', key, info.m)
      end
    end
  end
  local run = ARGV[3] .. id .. '}'
  local delayed = run .. ':delayed'
  local members = redis.call('SMEMBERS', delayed)
  if #members > 0 then
    chunked('ZREM', KEYS[3], nil, members)
  end
  redis.call('DEL', run, delayed, run .. ':logs')
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
