-- push_create.lua: a new push subscription of a service, unless the service has as many as
-- it may have (the count and the write in one step: replicas creating at once cannot pass it).
-- KEYS: 1 the service's subscription ids (zset)   2 the new subscription (hash)
-- ARGV: 1 its id   2 when it is created (ms)   3 how many a service may have
--       4... its fields, name and value in turn
-- Returns 'created', or 'too_many'.

if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 'too_many'
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
return 'created'
