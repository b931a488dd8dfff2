-- push_commit.lua: what the holder of a push subscription's lease has delivered: its
-- committed cursor and delivery status, and its latest attempts (the last 50 kept). Refused
-- when the lease is not the holder's any more (fencing: a replica that lost it, paused or
-- cut off, never moves the cursor back or forth), or the subscription is gone.
-- KEYS: 1 the subscription (hash)   2 its lease   3 its attempts (list)
-- ARGV: 1 the holder ("<replica>:<token>")   2 how many fields follow (n)   3... n fields,
--       name and value in turn   then the attempts (JSON each), oldest first
-- Returns 'ok', or 'fenced' (nothing written).

if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  return 'fenced'
end
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * n))
end
if #ARGV > 2 + 2 * n then
  redis.call('LPUSH', KEYS[3], unpack(ARGV, 3 + 2 * n))
  redis.call('LTRIM', KEYS[3], 0, 49)
end
return 'ok'
