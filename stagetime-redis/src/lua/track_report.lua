-- Creates a forge report record once and puts its subject on the open set.
-- KEYS[1] report key, KEYS[2] open set
-- ARGV[1] subject, ARGV[2] record, ARGV[3] ttl ms
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
