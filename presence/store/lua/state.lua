-- state.lua: one identity's state, read from its hash into a table whose fields carry the
-- names of presence/rules.py's Identity (FIELD, generated from presence/store/fields.py,
-- maps each to the short name stored), and written back with what follows from it: the
-- online index, the counters and the due set.
--
-- The identity scripts (apply_event.lua, fire_due.lua) share their KEYS and first ARGV:
--   KEYS 1 identity state (hash)   2 online index (zset)   3 counters (hash)   4 due set (zset)
--        5 the service's change feed in this bucket (stream)
--   ARGV 1 identity   2 its member in the due set   3 offline grace (ms)   4 endpoint TTL (ms,
--        0: never)   5 now (ms; '' for the Redis server's clock)   6 channel of every change
--        7 channel of this identity's changes   8 start of a change message:
--        '{"service_sid":..,"identity":..'   9 how long the feed keeps a change (ms)

local CHUNK = 500

local function fmt(n)
  return string.format('%d', n)
end

local function context(argv)
  return {
    identity = argv[1], member = argv[2], grace = tonumber(argv[3]), ttl = tonumber(argv[4]),
    now = clock(argv[5]), all = argv[6], one = argv[7], head = argv[8], messages = {},
    expired = 0, feed = KEYS[5], retention = tonumber(argv[9]),
  }
end

-- An endpoint's stored mark: '<EventId>:<ms>', the last event that named it, and when.
local function mark(value)
  local sep = string.find(value, ':', 1, true)
  return {
    event_id = tonumber(string.sub(value, 1, sep - 1)), at = tonumber(string.sub(value, sep + 1)),
  }
end

local function load(key)
  local flat = redis.call('HGETALL', key)
  local stored = {}
  local s = {
    key = key, connected = {}, tombstones = {}, count = { connected = 0, tombstones = 0 },
    put = {}, drop = {}, stored = stored,
  }
  local prefix = #CONNECTED
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    local head = string.sub(name, 1, prefix)
    local kind = (head == CONNECTED and 'connected') or (head == TOMBSTONE and 'tombstones')
    if kind then
      s[kind][string.sub(name, prefix + 1)] = mark(value)
      s.count[kind] = s.count[kind] + 1
    else
      stored[name] = value
    end
  end
  s.version = tonumber(stored[FIELD.version]) or 0
  s.published_online = stored[FIELD.published_online] == '1'
  s.changed_at = tonumber(stored[FIELD.changed_at])
  s.deadline = tonumber(stored[FIELD.deadline])
  s.deadline_event = stored[FIELD.deadline_event]
  s.top = tonumber(stored[FIELD.top])
  s.top_online = stored[FIELD.top_online] == '1'
  s.top_at = tonumber(stored[FIELD.top_at])
  s.off_floor = tonumber(stored[FIELD.off_floor])
  s.off_endpoint = stored[FIELD.off_endpoint]
  s.forgotten_floor = tonumber(stored[FIELD.forgotten_floor])
  s.was = { online = s.published_online, pending = s.deadline ~= nil, endpoints = s.count.connected }
  return s
end

local function optional(n)
  return n and fmt(n) or nil
end

-- The scalar fields as stored: absent until they first mean something.
local function encoded(s)
  local flag = function(on) return on and '1' or '0' end
  return {
    [FIELD.version] = s.version > 0 and fmt(s.version) or nil,
    [FIELD.published_online] = s.version > 0 and flag(s.published_online) or nil,
    [FIELD.changed_at] = optional(s.changed_at),
    [FIELD.deadline] = optional(s.deadline),
    [FIELD.deadline_event] = s.deadline_event,
    [FIELD.top] = optional(s.top),
    [FIELD.top_online] = s.top and flag(s.top_online) or nil,
    [FIELD.top_at] = s.top and optional(s.top_at) or nil,
    [FIELD.off_floor] = optional(s.off_floor),
    [FIELD.off_endpoint] = s.off_endpoint,
    [FIELD.forgotten_floor] = optional(s.forgotten_floor),
  }
end

-- kind 'connected' or 'tombstones': an endpoint's mark set or dropped.
local function put(s, kind, ep, event_id, now)
  if not s[kind][ep] then
    s.count[kind] = s.count[kind] + 1
  end
  s[kind][ep] = { event_id = event_id, at = now }
  local name = (kind == 'connected' and CONNECTED or TOMBSTONE) .. ep
  s.put[name] = fmt(event_id) .. ':' .. fmt(now)
  s.drop[name] = nil
end

local function drop(s, kind, ep)
  if s[kind][ep] then
    s[kind][ep] = nil
    s.count[kind] = s.count[kind] - 1
    local name = (kind == 'connected' and CONNECTED or TOMBSTONE) .. ep
    s.put[name] = nil
    s.drop[name] = true
  end
end

-- Sends a long argument list in slices (of an even length, for HSET's pairs), far below
-- the limit of Lua's unpack.
local function in_slices(command, key, args)
  for first = 1, #args, CHUNK do
    redis.call(command, key, unpack(args, first, math.min(first + CHUNK - 1, #args)))
  end
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
  end
  return due
end

-- Saves what changed, and brings the online index, the counters and the due set in line.
local function save(ctx, s, keys)
  local flat, gone = {}, {}
  for name, value in pairs(s.put) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  local now = encoded(s)
  for _, name in pairs(FIELD) do
    local value = now[name]
    if value == nil and s.stored[name] ~= nil then
      gone[#gone + 1] = name
    elseif value ~= s.stored[name] then
      flat[#flat + 1] = name
      flat[#flat + 1] = value
    end
  end
  for name in pairs(s.drop) do
    gone[#gone + 1] = name
  end
  in_slices('HSET', s.key, flat)
  in_slices('HDEL', s.key, gone)

  local pending = s.deadline ~= nil
  if s.published_online ~= s.was.online then
    if s.published_online then
      redis.call('ZADD', keys[2], 0, ctx.identity)
    else
      redis.call('ZREM', keys[2], ctx.identity)
    end
    redis.call('HINCRBY', keys[3], 'online', s.published_online and 1 or -1)
  end
  if pending ~= s.was.pending then
    redis.call('HINCRBY', keys[3], 'pending', pending and 1 or -1)
  end
  if s.count.connected ~= s.was.endpoints then
    redis.call('HINCRBY', keys[3], 'endpoints', s.count.connected - s.was.endpoints)
  end

  local due = due_at(ctx, s)
  if due then
    redis.call('ZADD', keys[4], due, ctx.member)
  else
    redis.call('ZREM', keys[4], ctx.member)
  end
end
