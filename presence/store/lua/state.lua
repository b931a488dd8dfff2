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

-- A counter's usual steps, as text.
local ONE = { [1] = '1', [-1] = '-1' }

local ESCAPED = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

-- A name as a JSON string, escaped exactly as Python's orjson escapes it (the messages of the
-- webhooks' changes and of the feed are written by it): '"', backslash and the characters
-- below 32, nothing else (cjson would also escape '/' and 127).
local function json_string(name)
  if not string.find(name, '[%z\1-\31"\\]') then
    return '"' .. name .. '"'
  end
  return '"' .. string.gsub(name, '[%z\1-\31"\\]', function(c)
    return ESCAPED[c] or string.format('\\u%04x', string.byte(c))
  end) .. '"'
end

-- The keys travel in the context: a Redis function gets them as a parameter, not as the
-- global KEYS of a script.
local function context(keys, argv, first)
  local sid = argv[first]
  return {
    sid = sid, member = sid .. ':' .. argv[first + 1], grace = tonumber(argv[first + 2]),
    ttl = tonumber(argv[first + 3]), now = clock(argv[first + 4]), all = argv[first + 5],
    retention = argv[first + 6], messages = {}, expired = 0, keys = keys,
    feed = keys[5], count = keys[6], server_now = argv[first + 4] == '',
  }
end

-- The identity the next changes are of (its channel and the start of its messages are made
-- by publish.lua, when there is a change: most calls have none).
local function about(ctx, identity)
  ctx.identity = identity
  ctx.head = nil
end

-- From its page, else from its page's graveyard (compacted), else never seen.
local function load(ctx)
  local value = redis.call('HGET', ctx.keys[1], ctx.identity)
  if value then
    return decode(value)
  end
  local blob = redis.call('GET', ctx.keys[2])
  if blob then
    local at, found = graveyard_find(blob, graveyard_key(ctx.identity))
    if found then
      return remember(from_record(string.sub(blob, at, at + RECORD - 1)), false)
    end
  end
  return decode(nil)
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

-- When the sweeper next has something to do for this identity (rules.py: due_at): its
-- deadline, or the TTL after the oldest thing that expires. (No closure: this runs at every
-- write, and making one costs more than the loops.)
local function due_at(ctx, s)
  local due = s.deadline
  if ctx.ttl > 0 then
    local oldest
    for _, m in pairs(s.connected) do
      if not oldest or m.at < oldest then
        oldest = m.at
      end
    end
    for _, m in pairs(s.tombstones) do
      if not oldest or m.at < oldest then
        oldest = m.at
      end
    end
    if (s.top_online or (s.top and not s.compacted and settled(s)))
      and (not oldest or s.top_at < oldest) then
      oldest = s.top_at
    end
    if oldest and (not due or oldest + ctx.ttl < due) then
      due = oldest + ctx.ttl
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
    if not s.was_compacted then
      inter(keys[2], ctx.identity, s)
    end
    if s.was_stored then
      redis.call('HDEL', keys[1], ctx.identity)
    end
  elseif s.top or s.version > 0 then
    due = due_at(ctx, s)
    redis.call('HSET', keys[1], ctx.identity, encode(s, due))
  end

  -- Increments as text: Redis would format a Lua number with '%.17g' first.
  local pending = s.deadline ~= nil
  if s.published_online ~= s.was_online then
    redis.call('HINCRBY', keys[3], 'online', s.published_online and '1' or '-1')
  end
  if pending ~= s.was_pending then
    redis.call('HINCRBY', keys[3], 'pending', pending and '1' or '-1')
  end
  local endpoints = s.count.connected - s.was_endpoints
  if endpoints ~= 0 then
    redis.call('HINCRBY', keys[3], 'endpoints', ONE[endpoints] or fmt(endpoints))
  end
  return due
end

-- The same for the one identity an event is about: its page is due no later than it is.
-- A page is due no later than any identity of it (every due lowered goes in here, and
-- fire_due.lua gives a page the earliest of its identities'): an identity due no earlier
-- than when it was stored (a flap's reconnect, which ends its pending offline) cannot move
-- it, and costs no ZADD.
local function save(ctx, s, keys)
  local due = store(ctx, s, keys)
  if due and (s.was_due == 0 or due < s.was_due) then
    redis.call('ZADD', keys[4], 'LT', fmt(due), ctx.member)
  end
end
