-- Records a webhook delivery once: the id key (with its ttl) is the memory
-- of the delivery id; the pending hash keeps the record until it is
-- settled (so a pending delivery outlives its ttl); the listing zset orders
-- the remembered deliveries by the end of their ttl (received + ttl).
-- KEYS[1] delivery key, KEYS[2] pending hash, KEYS[3] listing zset
-- ARGV[1] id, ARGV[2] record JSON, ARGV[3] ttl ms, ARGV[4] received ms
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
-- Forget listing entries whose ttl has ended (their keys have expired).
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
return 1
