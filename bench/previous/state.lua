-- state.lua: one identity's state, read from its page into a table whose fields carry the
-- names of presence/rules.py's Identity (codec.lua says how it is stored), and written back
-- with what follows from it: the counters, and when its page is next due.
--
-- The identity scripts share their KEYS:
--   1 the page (hash: identity -> state)   2 the page's graveyard (string)   3 counters (hash)
--   4 due pages (zset: page -> when it is next due)   5 the service's change feed (stream)
--   6 how many changes that feed has ever had (string)
-- and the ARGV of the page (fire_due.lua's first, apply_event.lua's after the identity):
--   1 ServiceSid   2 page   3 offline grace (ms)   4 endpoint TTL (ms, 0: never)   5 now (ms;
--   '' for the Redis server's clock)   6 channel of every change (an identity's channel is
--   it, ':ServiceSid:identity')   7 how long the feed keeps a change (ms)

local ESCAPED = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

-- A name as a JSON string, escaped exactly as Python's orjson escapes it (the messages of the
-- webhooks' changes and of the feed are written by it): '"', backslash and the characters
-- below 32, nothing else (cjson would also escape '/' and 127).
local function json_string(name)
  return '"' .. string.gsub(name, '[%z\1-\31"\\]', function(c)
    return ESCAPED[c] or string.format('\\u%04x', string.byte(c))
  end) .. '"'
end

local function context(argv, first)
  local sid = argv[first]
  return {
    sid = sid, member = sid .. ':' .. argv[first + 1], grace = tonumber(argv[first + 2]),
    ttl = tonumber(argv[first + 3]), now = clock(argv[first + 4]), all = argv[first + 5],
    retention = tonumber(argv[first + 6]), messages = {}, expired = 0, feed = KEYS[5],
    count = KEYS[6],
  }
end

-- The identity the next changes are of: its channel, and the start of its messages.
local function about(ctx, identity)
  ctx.identity = identity
  ctx.one = ctx.all .. ':' .. ctx.sid .. ':' .. identity
  ctx.head = '{"service_sid":"' .. ctx.sid .. '","identity":' .. json_string(identity)
end

local function remember(s, stored)
  s.was = {
    online = s.published_online, pending = s.deadline ~= nil,
    endpoints = s.count.connected, stored = stored, compacted = s.compacted,
  }
  return s
end

-- From its page, else from its page's graveyard (compacted), else never seen.
local function load(ctx)
  local value = redis.call('HGET', KEYS[1], ctx.identity)
  if value then
    return remember(decode(value), true)
  end
  local blob = redis.call('GET', KEYS[2])
  if blob then
    local at, found = graveyard_find(blob, graveyard_key(ctx.identity))
    if found then
      return remember(from_record(string.sub(blob, at, at + RECORD - 1)), false)
    end
  end
  return remember(decode(nil), false)
end

-- kind 'connected' or 'tombstones': an endpoint's mark set or dropped. Whatever changes the
-- state sets s.touched (here, publish.lua, expiry.lua): only a touched state is written back.
local function put(s, kind, ep, event_id, now)
  s.touched = true
  if not s[kind][ep] then
    s.count[kind] = s.count[kind] + 1
  end
  s[kind][ep] = { event_id = event_id, at = now }
end

local function drop(s, kind, ep)
  if s[kind][ep] then
    s.touched = true
    s[kind][ep] = nil
    s.count[kind] = s.count[kind] - 1
  end
end

-- Nothing left but its history (rules.py: settled).
local function settled(s)
  return not s.published_online and not s.deadline and s.count.connected == 0
    and s.count.tombstones == 0 and not s.top_online
end

-- When the sweeper next has something to do for this identity (rules.py: due_at).
local function due_at(ctx, s)
  local due = s.deadline
  if ctx.ttl > 0 then
    local function sooner(at)
      if not due or at + ctx.ttl < due then
        due = at + ctx.ttl
      end
    end
    for _, m in pairs(s.connected) do
      sooner(m.at)
    end
    for _, m in pairs(s.tombstones) do
      sooner(m.at)
    end
    if s.top_online then
      sooner(s.top_at)
    end
    if s.top and not s.compacted and settled(s) then
      sooner(s.top_at)
    end
  end
  return due
end

-- A compacted identity's record, put in (or replaced in) its page's graveyard.
local function inter(graveyard, name, s)
  local key = graveyard_key(name)
  local record = key .. record_of(s)
  local blob = redis.call('GET', graveyard) or ''
  local at, found = graveyard_find(blob, key)
  if found then
    redis.call('SETRANGE', graveyard, at - 1, record)
  else
    redis.call('SET', graveyard, string.sub(blob, 1, at - 1) .. record .. string.sub(blob, at))
  end
end

-- Saves the identity (in its page; compacted, in the graveyard), brings the counters in line,
-- and returns when it is next due (nil: never).
local function store(ctx, s, keys)
  local due
  if s.compacted then
    if not s.was.compacted then
      inter(keys[2], ctx.identity, s)
    end
    if s.was.stored then
      redis.call('HDEL', keys[1], ctx.identity)
    end
  elseif s.top or s.version > 0 then
    due = due_at(ctx, s)
    redis.call('HSET', keys[1], ctx.identity, encode(s, due))
  end

  local pending = s.deadline ~= nil
  if s.published_online ~= s.was.online then
    redis.call('HINCRBY', keys[3], 'online', s.published_online and 1 or -1)
  end
  if pending ~= s.was.pending then
    redis.call('HINCRBY', keys[3], 'pending', pending and 1 or -1)
  end
  if s.count.connected ~= s.was.endpoints then
    redis.call('HINCRBY', keys[3], 'endpoints', s.count.connected - s.was.endpoints)
  end
  return due
end

-- The same for the one identity an event is about: its page is due no later than it is.
local function save(ctx, s, keys)
  local due = store(ctx, s, keys)
  if due then
    redis.call('ZADD', keys[4], 'LT', due, ctx.member)
  end
end
