-- push_acquire.lua: the lease of a push subscription taken by a replica, when nobody holds
-- it and the subscription is enabled: the next fencing token, the lease "<replica>:<token>"
-- for its time; a former holder's commits carry an older token, and are refused.
-- KEYS: 1 the subscription (hash)   2 its lease   3 its fence
-- ARGV: 1 the replica's id   2 the lease's time (ms)
-- Returns {token, its fields (name and value in turn)...}, or {} when it is not taken.

if redis.call('HGET', KEYS[1], 'enabled') ~= '1' or redis.call('EXISTS', KEYS[2]) == 1 then
  return {}
end
local token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
local out = { tostring(token) }
for _, value in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = value
end
return out
