-- append_log.lua: add to one attempt's log, keeping its last `keep` bytes.
-- Idempotent: bytes before the stored end are not written again; a gap (the
-- text starts beyond the stored end) drops what was kept, so the kept tail
-- is contiguous. The log takes the run's expiry (commit.lua sets it on the
-- logs hash when the run finishes; this covers a log written after that).
--
-- KEYS: 1 run hash, 2 run's logs hash
-- ARGV: 1 field suffix (<attempt>:<task>), 2 offset of the text in the whole
--       log, 3 text, 4 '1' to mark the log complete, 5 bytes to keep
-- Returns 'ok', or 'notfound' when the run does not exist.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'notfound'
end
local f = ARGV[1]
local at, text, keep = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5])
local stored = redis.call('HGET', KEYS[2], 'n:' .. f)
local n = tonumber(stored or '0')
local tail
if at > n then
  tail = text
elseif at + #text > n then
  tail = (redis.call('HGET', KEYS[2], 't:' .. f) or '') .. string.sub(text, n - at + 1)
end
if tail then
  if #tail > keep then
    tail = string.sub(tail, #tail - keep + 1)
  end
  redis.call('HSET', KEYS[2], 't:' .. f, tail, 'n:' .. f, string.format('%d', at + #text))
elseif not stored then
  redis.call('HSET', KEYS[2], 't:' .. f, '', 'n:' .. f, '0')
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 'e:' .. f, '1')
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 'ok'
