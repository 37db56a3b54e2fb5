-- Stores the final form of a delivery, keeping its expiry, and takes it
-- off the pending hash. An unknown or expired id changes nothing but the
-- pending hash.
-- KEYS[1] delivery key, KEYS[2] pending hash
-- ARGV[1] id, ARGV[2] record JSON
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
