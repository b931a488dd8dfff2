-- codec.lua: an identity's state in as few bytes as the rules allow: a field of its page (a
-- hash of the identities of one bucket and page of a service), and, once compacted, a record
-- of its page's graveyard. Small values keep a page in Redis' compact listpack encoding
-- (values up to 64 bytes, up to 128 of them): one online identity with one UUID endpoint is
-- 62 bytes here, against some 250 as text fields.
--
-- A value, big-endian, fixed widths (times in ms, EventIds in 7 bytes, exact up to 2^53):
--   flags(1) due(6) version(4) changed_at(6) top(7) top_at(6)
--   [deadline(6) deadline_event(7)] [off_floor(7) off_endpoint] [forgotten_floor(7)]
--   connected count (endpoint event_id(7) at(6))*   tombstone count (the same)*
-- flags: 1 published online, 2 top online, 4 a deadline, 8 an off floor, 16 a forgotten
-- floor, 32 a top. due: when the sweeper next has something to do for it (0: nothing).
-- A count: one byte up to 254, else 255 and two bytes. An endpoint: 0 and 16 bytes for a
-- lowercase UUID, else its length (1 to 254) and its bytes, or 255, a 2-byte length and its
-- bytes.
-- A graveyard is one string of sorted 23-byte records: the identity's 6-byte hash,
-- version(4), top(7), changed_at(6).

-- A number as Redis and the service read it: an integer's digits, never Lua's %.14g.
local function fmt(n)
  return string.format('%d', n)
end

local PUBLISHED, TOP_ONLINE, DEADLINE, OFF, FORGOTTEN, TOP = 1, 2, 4, 8, 16, 32
local RECORD = 23
local HEAD = '>BI6I4I6I7I6'

-- Redis' struct library packs and unpacks the fixed-width numbers in C, several at a time
-- (a quarter of the cost of doing it a byte at a time in Lua). The embedded store's Lua has
-- no struct: the same, for the formats used here ('>' then B and I<n>), in Lua.
local pack, unpack_at = nil, nil
if struct then
  pack, unpack_at = struct.pack, struct.unpack
else
  local function widths(format)
    local out = {}
    for kind, n in string.gmatch(format, '([BI])(%d*)') do
      out[#out + 1] = kind == 'B' and 1 or tonumber(n)
    end
    return out
  end
  pack = function(format, ...)
    local values, out = { ... }, {}
    for i, width in ipairs(widths(format)) do
      local n, b = values[i], {}
      for k = width, 1, -1 do
        b[k] = n % 256
        n = math.floor(n / 256)
      end
      out[i] = string.char(unpack(b))
    end
    return table.concat(out)
  end
  unpack_at = function(format, s, pos)
    pos = pos or 1
    local out = {}
    for i, width in ipairs(widths(format)) do
      local n = 0
      for k = pos, pos + width - 1 do
        n = n * 256 + string.byte(s, k)
      end
      out[i] = n
      pos = pos + width
    end
    out[#out + 1] = pos
    return unpack(out)
  end
end

local function has(flags, bit)
  return flags % (bit * 2) >= bit
end

-- A lowercase UUID (8-4-4-4-12 hexadecimal digits), written out: this file runs at every call.
local UUID = '^[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$'

local function endpoint_bytes(ep)
  if #ep == 36 and string.find(ep, UUID) then
    local sub = string.sub
    return '\0' .. pack('>I4I4I4I4', tonumber(sub(ep, 1, 8), 16),
      tonumber(sub(ep, 10, 13) .. sub(ep, 15, 18), 16),
      tonumber(sub(ep, 20, 23) .. sub(ep, 25, 28), 16), tonumber(sub(ep, 29, 36), 16))
  elseif #ep < 255 then
    return string.char(#ep) .. ep
  end
  return '\255' .. pack('>I2', #ep) .. ep
end

-- Returns the endpoint and the position after it.
local function endpoint_at(s, pos)
  local tag = string.byte(s, pos)
  if tag == 0 then
    local a, b, c, d = unpack_at('>I4I4I4I4', s, pos + 1)
    return string.format('%08x-%04x-%04x-%04x-%04x%08x', a, math.floor(b / 65536), b % 65536,
      math.floor(c / 65536), c % 65536, d), pos + 17
  elseif tag < 255 then
    return string.sub(s, pos + 1, pos + tag), pos + 1 + tag
  end
  local length = unpack_at('>I2', s, pos + 1)
  return string.sub(s, pos + 3, pos + 2 + length), pos + 3 + length
end

-- The state table of rules.py's Identity, from a value (nil: never seen).
local function decode(value)
  local s = {
    connected = {}, tombstones = {}, count = { connected = 0, tombstones = 0 },
    version = 0, published_online = false, top_online = false, compacted = false,
  }
  if not value then
    return s
  end
  local flags, _, version, changed_at, top, top_at, pos = unpack_at(HEAD, value)
  s.published_online = has(flags, PUBLISHED)
  s.top_online = has(flags, TOP_ONLINE)
  s.version = version
  if changed_at ~= 0 then
    s.changed_at = changed_at
  end
  if has(flags, TOP) then
    s.top = top
  end
  s.top_at = top_at
  if has(flags, DEADLINE) then
    local event
    s.deadline, event, pos = unpack_at('>I6I7', value, pos)
    s.deadline_event = string.format('%d', event)
  end
  if has(flags, OFF) then
    s.off_floor, pos = unpack_at('>I7', value, pos)
    s.off_endpoint, pos = endpoint_at(value, pos)
  end
  if has(flags, FORGOTTEN) then
    s.forgotten_floor, pos = unpack_at('>I7', value, pos)
  end
  for _, kind in ipairs({ 'connected', 'tombstones' }) do
    local count = string.byte(value, pos)
    pos = pos + 1
    if count == 255 then
      count, pos = unpack_at('>I2', value, pos)
    end
    local marks = s[kind]
    for _ = 1, count do
      local ep, event_id, at
      ep, pos = endpoint_at(value, pos)
      event_id, at, pos = unpack_at('>I7I6', value, pos)
      marks[ep] = { event_id = event_id, at = at }
    end
    s.count[kind] = count
  end
  return s
end

local function encode(s, due)
  local flags = (s.published_online and PUBLISHED or 0) + (s.top_online and TOP_ONLINE or 0)
    + (s.deadline and DEADLINE or 0) + (s.off_floor and OFF or 0)
    + (s.forgotten_floor and FORGOTTEN or 0) + (s.top and TOP or 0)
  local parts = {
    pack(HEAD, flags, due or 0, s.version, s.changed_at or 0, s.top or 0, s.top_at or 0),
  }
  if s.deadline then
    parts[#parts + 1] = pack('>I6I7', s.deadline, tonumber(s.deadline_event))
  end
  if s.off_floor then
    parts[#parts + 1] = pack('>I7', s.off_floor) .. endpoint_bytes(s.off_endpoint)
  end
  if s.forgotten_floor then
    parts[#parts + 1] = pack('>I7', s.forgotten_floor)
  end
  for _, kind in ipairs({ 'connected', 'tombstones' }) do
    local count = s.count[kind]
    parts[#parts + 1] = count < 255 and string.char(count) or '\255' .. pack('>I2', count)
    for ep, m in pairs(s[kind]) do
      parts[#parts + 1] = endpoint_bytes(ep) .. pack('>I7I6', m.event_id, m.at)
    end
  end
  return table.concat(parts)
end

-- The position after the endpoint at pos, without making its text.
local function after_endpoint(s, pos)
  local tag = string.byte(s, pos)
  if tag == 0 then
    return pos + 17
  elseif tag < 255 then
    return pos + 1 + tag
  end
  return pos + 3 + unpack_at('>I2', s, pos + 1)
end

-- What a query answers of a value (read.lua), without the rest of decode's work: whether it
-- is published online and pending offline, its version, highest EventId (false: none),
-- last change (false: none), and its connected endpoints.
local function answer_of(value)
  local flags, _, version, changed_at, top, _, pos = unpack_at(HEAD, value)
  if has(flags, DEADLINE) then
    pos = pos + 13
  end
  if has(flags, OFF) then
    pos = after_endpoint(value, pos + 7)
  end
  if has(flags, FORGOTTEN) then
    pos = pos + 7
  end
  local count = string.byte(value, pos)
  pos = pos + 1
  if count == 255 then
    count, pos = unpack_at('>I2', value, pos)
  end
  local endpoints = {}
  for i = 1, count do
    endpoints[i], pos = endpoint_at(value, pos)
    pos = pos + 13
  end
  local online = has(flags, PUBLISHED)
  return online, online and has(flags, DEADLINE), version, has(flags, TOP) and top,
    changed_at ~= 0 and changed_at, endpoints
end

-- Its version, without decoding the rest of it (the listing with versions).
local function version_of(value)
  return (unpack_at('>I4', value, 8))
end

-- When a stored value is next due (0: never), without decoding the rest of it.
local function due_of(value)
  return (unpack_at('>I6', value, 2))
end

-- A 48-bit hash of an identity, for its graveyard record (two 24-bit halves of djb2 and
-- sdbm, each kept below 2^32 so that doubles compute them exactly). Records are told apart
-- by it alone, not by name: with k compacted identities in a page, a name never seen there
-- matches one of them with a chance of k / 2^48 (about 4e-13 for a page of 120), and would
-- then start from that one's version and EventId floor.
local function graveyard_key(name)
  local a, b = 5381, 0
  for i = 1, #name do
    local c = string.byte(name, i)
    a = (a * 33 + c) % 4294967296
    b = (c + b * 65599) % 4294967296
  end
  return pack('>I3I3', math.floor(a / 256), math.floor(b / 256))
end

-- The record's position in the graveyard (1-based), and whether it is there. Keys compare
-- as numbers: Lua compares strings by the locale's collation, not byte by byte.
local function graveyard_find(blob, key)
  local wanted = unpack_at('>I6', key)
  local low, high = 0, #blob / RECORD - 1
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local at = unpack_at('>I6', blob, mid * RECORD + 1)
    if at == wanted then
      return mid * RECORD + 1, true
    elseif at < wanted then
      low = mid + 1
    else
      high = mid - 1
    end
  end
  return low * RECORD + 1, false
end

local function record_of(s)
  return pack('>I4I7I6', s.version, s.top or 0, s.changed_at or 0)
end

-- The state of a compacted identity, from its record (rules.py: compact).
local function from_record(record)
  local s = decode(nil)
  local changed_at
  s.version, s.top, changed_at = unpack_at('>I4I7I6', record, 7)
  if changed_at ~= 0 then
    s.changed_at = changed_at
  end
  s.forgotten_floor = s.top
  s.top_at = 0
  s.compacted = true
  return s
end
