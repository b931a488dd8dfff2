-- push_renew.lua: a push subscription's lease kept for another while by its holder, and the
-- subscription as it is now (a change of URL, secret or state reaches the holder so); a
-- disabled subscription's lease goes.
-- KEYS: 1 the subscription (hash)   2 its lease
-- ARGV: 1 the holder ("<replica>:<token>")   2 the lease's time (ms)
-- Returns its fields (name and value in turn); {} when the holder lost the lease, or the
-- subscription is gone or disabled.

if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {}
end
if redis.call('HGET', KEYS[1], 'enabled') ~= '1' then
  redis.call('DEL', KEYS[2])
  return {}
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('HGETALL', KEYS[1])
