-- epoch.lua: the epoch of a bucket's data: a random value that lives as long as the data
-- does, so a feed cursor can tell that the data it counted in is gone (a Redis restarted
-- empty, flushed, or another deployment's).
-- KEYS: 1 the bucket's epoch (string)   ARGV: 1 the epoch to set if there is none
-- Returns the epoch.

local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
return epoch
