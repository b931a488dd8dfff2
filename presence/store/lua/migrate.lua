-- migrate.lua: moves one identity from storage format 1 (a hash per identity, with an online
-- index per bucket and service and a due set per bucket) into its page (this release's
-- format). Run with the rules in front of it (state.lua, codec.lua).
-- KEYS 1-4 as state.lua's (page, graveyard, counters, due pages), then 5 the identity's
-- format-1 hash, 6 its format-1 online index, 7 the bucket's format-1 due set.
-- ARGV 1 identity   2 its page's member in the due pages   3 endpoint TTL (ms, 0: never)
--   4 its member in the format-1 due set
-- Returns 'moved'; 'kept' when the page already had the identity (written by this format
-- after an earlier migration: it is the newer, and the format-1 hash is dropped, its share
-- of the counters with it); 'gone' when there was no format-1 hash (moved already).

local flat = redis.call('HGETALL', KEYS[5])
if #flat == 0 then
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZREM', KEYS[7], ARGV[4])
  return 'gone'
end

-- The format-1 fields (presence/store/fields.py of that release): an endpoint's mark is
-- 'e:<EndpointId>' (connected) or 't:<EndpointId>' (a tombstone) = '<EventId>:<ms>'.
local s, field = decode(nil), {}
for i = 1, #flat, 2 do
  local name, value = flat[i], flat[i + 1]
  local head = string.sub(name, 1, 2)
  if head == 'e:' or head == 't:' then
    local kind = head == 'e:' and 'connected' or 'tombstones'
    local sep = string.find(value, ':', 1, true)
    s[kind][endpoint_bytes(string.sub(name, 3))] = {
      event_id = tonumber(string.sub(value, 1, sep - 1)), at = tonumber(string.sub(value, sep + 1)),
    }
    s.count[kind] = s.count[kind] + 1
  else
    field[name] = value
  end
end
s.version = tonumber(field.v) or 0
s.published_online = field.on == '1'
s.changed_at = tonumber(field.ca)
s.deadline = tonumber(field.dl)
s.deadline_event = field.de
s.top = tonumber(field.top)
s.top_online = field.ton == '1'
s.top_at = tonumber(field.tat) or 0
s.off_floor = tonumber(field.off)
s.off_endpoint = field.oe and endpoint_bytes(field.oe)
s.forgotten_floor = tonumber(field.tf)

local ctx = { keys = KEYS, identity = ARGV[1], member = ARGV[2], ttl = tonumber(ARGV[3]) }
local outcome = 'moved'
local current = load(ctx)
if current.was_stored or current.compacted then
  -- The counters count both: this hash's share goes.
  outcome = 'kept'
  if s.published_online then
    redis.call('HINCRBY', KEYS[3], 'online', -1)
  end
  if s.deadline then
    redis.call('HINCRBY', KEYS[3], 'pending', -1)
  end
  if s.count.connected > 0 then
    redis.call('HINCRBY', KEYS[3], 'endpoints', -s.count.connected)
  end
else
  -- The counters already count it as it is: nothing changes them.
  remember(s, false)
  save(ctx, s, KEYS)
end
redis.call('DEL', KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[4])
return outcome
