-- push_update.lua: fields of an existing push subscription set (its URL, description, or
-- whether it is enabled), never a subscription made anew by a late update.
-- KEYS: 1 the subscription (hash)   ARGV: its fields, name and value in turn
-- Returns its fields after (name and value in turn), or {} when it does not exist.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return redis.call('HGETALL', KEYS[1])
