-- prelude.lua: the presence rules shared by reachability.lua and tick.lua, which are each sent
-- to Redis with this file in front of them. It defines functions only; it reads no KEYS.
--
-- Both scripts take the same first eight ARGV:
--   1 identity   2 its member in the due set   3 offline grace (ms)   4 endpoint TTL (ms, 0: never)
--   5 now (ms; '' for the Redis server's clock)   6 channel of every change
--   7 channel of this identity's changes   8 start of a change message: '{"service_sid":..,"identity":..'
-- and the same KEYS:
--   1 identity state (hash)   2 online index (zset)   3 counters (hash)   4 due set (zset)
--
-- State fields of the identity hash:
--   v    version: number of changes published        on   '1' while published online
--   ca   time (ms) of the last published change        dl   offline deadline (ms) while pending
--   de   EventId behind the pending offline            top  highest EventId applied
--   ton  '1' while the top event said IsIdentityOnline and that evidence has not expired
--   tat  time (ms) the top event was applied           off  EventId of the last IsIdentityOnline=false
--   oe   endpoint of that event                        tf   forgotten endpoints: stale up to here
--   e:<endpoint>  '<EventId>:<ms>' of a connected endpoint: the last event naming it, and when
--   t:<endpoint>  the same for a disconnected endpoint (a tombstone)

local MAX_TOMBSTONES = 64
local CHUNK = 500

local function fmt(n)
  return string.format('%d', n)
end

local function clock(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ISO 8601 in UTC with milliseconds (days to civil date: Howard Hinnant's algorithm).
local function iso(ms)
  local seconds = math.floor(ms / 1000)
  local millis = ms - seconds * 1000
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local hour = math.floor(rest / 3600)
  local minute = math.floor((rest - hour * 3600) / 60)
  local second = rest - hour * 3600 - minute * 60
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then
    year = year + 1
  end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ',
    year, month, day, hour, minute, second, millis)
end

local function context(argv)
  return {
    identity = argv[1], member = argv[2], grace = tonumber(argv[3]), ttl = tonumber(argv[4]),
    now = clock(argv[5]), all = argv[6], one = argv[7], head = argv[8], messages = {},
    expired = 0,
  }
end

local function entry(value)
  local sep = string.find(value, ':', 1, true)
  return { id = tonumber(string.sub(value, 1, sep - 1)), at = tonumber(string.sub(value, sep + 1)) }
end

local function load(key)
  local flat = redis.call('HGETALL', key)
  local s = { key = key, f = {}, e = {}, t = {}, count = { e = 0, t = 0 }, put = {}, drop = {} }
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'e:' or kind == 't:' then
      kind = string.sub(kind, 1, 1)
      s[kind][string.sub(name, 3)] = entry(value)
      s.count[kind] = s.count[kind] + 1
    else
      s.f[name] = value
    end
  end
  s.was_online, s.was_pending, s.had_endpoints = s.f.on == '1', s.f.dl ~= nil, s.count.e
  return s
end

local function write(s, name, value)
  s.put[name] = value
  s.drop[name] = nil
end

local function erase(s, name)
  s.put[name] = nil
  s.drop[name] = true
end

local function setf(s, name, value)
  s.f[name] = value
  write(s, name, value)
end

local function unsetf(s, name)
  if s.f[name] ~= nil then
    s.f[name] = nil
    erase(s, name)
  end
end

-- kind 'e' is the set of connected endpoints, kind 't' the tombstones.
local function put(s, kind, ep, id, now)
  if not s[kind][ep] then
    s.count[kind] = s.count[kind] + 1
  end
  s[kind][ep] = { id = id, at = now }
  write(s, kind .. ':' .. ep, fmt(id) .. ':' .. fmt(now))
end

local function drop(s, kind, ep)
  if s[kind][ep] then
    s[kind][ep] = nil
    s.count[kind] = s.count[kind] - 1
    erase(s, kind .. ':' .. ep)
  end
end

-- Events of endpoints no longer remembered are stale at or below this EventId, so an endpoint
-- that was forgotten (an old tombstone, an expired endpoint) still cannot come back.
local function raise_floor(s, id)
  if id > (tonumber(s.f.tf) or -1) then
    setf(s, 'tf', fmt(id))
  end
end

local function forget(s, kind, ep)
  raise_floor(s, s[kind][ep].id)
  drop(s, kind, ep)
end

local function bury(s, ep, id, now)
  put(s, 't', ep, id, now)
  if s.count.t > MAX_TOMBSTONES then
    local oldest
    for name, t in pairs(s.t) do
      if not oldest or t.id < s.t[oldest].id then
        oldest = name
      end
    end
    forget(s, 't', oldest)
  end
end

local function live(s)
  return s.count.e > 0 or s.f.ton == '1'
end

local function publish(ctx, s, online, reason, event_id)
  local version = fmt((tonumber(s.f.v) or 0) + 1)
  setf(s, 'v', version)
  setf(s, 'on', online and '1' or '0')
  setf(s, 'ca', fmt(ctx.now))
  unsetf(s, 'dl')
  unsetf(s, 'de')
  local message = ctx.head .. ',"online":' .. (online and 'true' or 'false')
    .. ',"reason":"' .. reason .. '","event_id":' .. (event_id or 'null')
    .. ',"version":' .. version .. ',"changed_at":"' .. iso(ctx.now) .. '"}'
  redis.call('PUBLISH', ctx.all, message)
  redis.call('PUBLISH', ctx.one, message)
  ctx.messages[#ctx.messages + 1] = message
end

-- Applies what the passage of time has made due: endpoints and online evidence not named for
-- the TTL expire, old tombstones are forgotten, and a passed offline deadline fires. Run before
-- every event too, so the outcome never depends on when the sweeper last came by.
local function advance(ctx, s)
  local expired = false
  if ctx.ttl > 0 then
    local limit = ctx.now - ctx.ttl
    for ep, e in pairs(s.e) do
      if e.at <= limit then
        forget(s, 'e', ep)
        ctx.expired = ctx.expired + 1
        expired = true
      end
    end
    for ep, t in pairs(s.t) do
      if t.at <= limit then
        forget(s, 't', ep)
      end
    end
    if s.f.ton == '1' and tonumber(s.f.tat) <= limit then
      setf(s, 'ton', '0')
      raise_floor(s, tonumber(s.f.top))
      expired = true
    end
  end
  local deadline = tonumber(s.f.dl)
  if deadline and deadline <= ctx.now and not live(s) then
    publish(ctx, s, false, 'disconnected', s.f.de)
  elseif expired and not deadline and s.f.on == '1' and not live(s) then
    publish(ctx, s, false, 'expired', nil)
  end
end

-- Sends a long argument list in slices (of an even length, for HSET's pairs), far below
-- the limit of Lua's unpack.
local function in_slices(command, key, args)
  for first = 1, #args, CHUNK do
    redis.call(command, key, unpack(args, first, math.min(first + CHUNK - 1, #args)))
  end
end

-- Saves the state and brings the online index, the counters and the due set in line with it.
local function finish(ctx, s, keys)
  local flat = {}
  for name, value in pairs(s.put) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  in_slices('HSET', s.key, flat)
  local gone = {}
  for name in pairs(s.drop) do
    gone[#gone + 1] = name
  end
  in_slices('HDEL', s.key, gone)

  local online = s.f.on == '1'
  local pending = s.f.dl ~= nil
  if online ~= s.was_online then
    if online then
      redis.call('ZADD', keys[2], 0, ctx.identity)
    else
      redis.call('ZREM', keys[2], ctx.identity)
    end
    redis.call('HINCRBY', keys[3], 'online', online and 1 or -1)
  end
  if pending ~= s.was_pending then
    redis.call('HINCRBY', keys[3], 'pending', pending and 1 or -1)
  end
  if s.count.e ~= s.had_endpoints then
    redis.call('HINCRBY', keys[3], 'endpoints', s.count.e - s.had_endpoints)
  end

  local due = tonumber(s.f.dl)
  if ctx.ttl > 0 then
    local function sooner(at)
      if not due or at + ctx.ttl < due then
        due = at + ctx.ttl
      end
    end
    for _, e in pairs(s.e) do
      sooner(e.at)
    end
    for _, t in pairs(s.t) do
      sooner(t.at)
    end
    if s.f.ton == '1' then
      sooner(tonumber(s.f.tat))
    end
  end
  if due then
    redis.call('ZADD', keys[4], due, ctx.member)
  else
    redis.call('ZREM', keys[4], ctx.member)
  end
end
