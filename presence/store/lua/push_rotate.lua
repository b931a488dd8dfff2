-- push_rotate.lua: a push subscription's secret replaced; the one it replaces still signs
-- until a time, and the one before that no longer (at most two sign).
-- KEYS: 1 the subscription (hash)
-- ARGV: 1 the new secret   2 until when the old one signs too (ms; now or before: not at all)
-- Returns its fields after (name and value in turn), or {} when it does not exist.

local old = redis.call('HGET', KEYS[1], 'secret')
if not old then
  return {}
end
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'previous_secret', old,
  'previous_expires_at', ARGV[2])
return redis.call('HGETALL', KEYS[1])
