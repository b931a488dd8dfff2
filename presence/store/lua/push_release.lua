-- push_release.lua: a push subscription's lease given back by its holder (at shutdown, or
-- to spread the leases), so another replica takes it at once.
-- KEYS: 1 its lease   ARGV: 1 the holder ("<replica>:<token>")
-- Returns 1 when released, 0 when the holder did not hold it.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
