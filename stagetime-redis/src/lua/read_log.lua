-- read_log.lua: one attempt's kept log from a byte offset (only the part
-- asked for crosses the network).
--
-- KEYS: 1 run's logs hash
-- ARGV: 1 field suffix (<attempt>:<task>), 2 offset to read from
-- Returns nil when nothing was written, else {start, end, ended ('1'/'0'), bytes}.

local f = ARGV[1]
local v = redis.call('HMGET', KEYS[1], 't:' .. f, 'n:' .. f, 'e:' .. f)
if not v[2] then
  return nil
end
local tail = v[1] or ''
local n = tonumber(v[2])
local kept = n - #tail
local from = tonumber(ARGV[2])
if from < kept then
  from = kept
end
if from > n then
  from = n
end
return {string.format('%d', from), v[2], v[3] and '1' or '0', string.sub(tail, from - kept + 1)}
