-- Replaces a forge report record (keeping its expiry) and opens or closes
-- its subject; an unknown or expired subject only leaves the open set.
-- KEYS[1] report key, KEYS[2] open set
-- ARGV[1] subject, ARGV[2] record, ARGV[3] '1' to keep it open
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1
