-- push_delete.lua: a push subscription gone, with its lease (its holder's next renewal or
-- commit finds it lost, and stops), fence and attempts.
-- KEYS: 1 the service's subscription ids (zset)   2 the subscription (hash)   3 its lease
--       4 its fence   5 its attempts (list)
-- ARGV: 1 its id
-- Returns 1 when it existed, else 0.

local existed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return existed
