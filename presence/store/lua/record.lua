-- record.lua: records one document, list or map event and republishes it, once.
-- KEYS: 1 the idempotency token key, if ARGV 1 is '1'; then the collection's seen set (zset of
--       EventIds), if ARGV 2 is not '' or ARGV 3 is '1'
-- ARGV: 1 '1' when the webhook carried an I-Twilio-Idempotency-Token
--       2 EventId of an item event, else ''   3 '1' when the event removes its list or map
--       4 channel   5 message   6 token memory (s)   7 EventIds remembered per collection
--       8 seen set memory (s)
-- Returns 'applied', or 'duplicate' when the token or the EventId was already recorded.

local token, seen
local n = 1
if ARGV[1] == '1' then
  token = KEYS[1]
  n = 2
end
if ARGV[2] ~= '' or ARGV[3] == '1' then
  seen = KEYS[n]
end
if token and redis.call('EXISTS', token) == 1 then
  return 'duplicate'
end
if ARGV[2] ~= '' then
  local id = tonumber(ARGV[2])
  if redis.call('ZSCORE', seen, ARGV[2]) then
    return 'duplicate'
  end
  local cap = tonumber(ARGV[7])
  if redis.call('ZCARD', seen) >= cap then
    -- Below the window of remembered EventIds a late event and a repeat look the same;
    -- treating it as a repeat never announces anything twice.
    local lowest = redis.call('ZRANGE', seen, 0, 0, 'WITHSCORES')
    if id < tonumber(lowest[2]) then
      return 'duplicate'
    end
    redis.call('ZREMRANGEBYRANK', seen, 0, 0)
  end
  redis.call('ZADD', seen, id, ARGV[2])
  redis.call('EXPIRE', seen, ARGV[8])
end
if ARGV[3] == '1' then
  redis.call('DEL', seen)
end
if token then
  redis.call('SET', token, '1', 'EX', ARGV[6])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'applied'
