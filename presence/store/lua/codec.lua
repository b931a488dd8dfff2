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

local PUBLISHED, TOP_ONLINE, DEADLINE, OFF, FORGOTTEN, TOP = 1, 2, 4, 8, 16, 32
local RECORD = 23

local function bytes_of(n, width)
  local out = {}
  for i = width, 1, -1 do
    out[i] = n % 256
    n = math.floor(n / 256)
  end
  return string.char(unpack(out))
end

local function number_at(s, pos, width)
  local n = 0
  for i = pos, pos + width - 1 do
    n = n * 256 + string.byte(s, i)
  end
  return n
end

local function has(flags, bit)
  return flags % (bit * 2) >= bit
end

local function endpoint_bytes(ep)
  if #ep == 36 and string.find(ep, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$')
      and not string.find(ep, '%u') then
    local hex = string.gsub(ep, '-', '')
    local out = {}
    for i = 1, 32, 2 do
      out[#out + 1] = tonumber(string.sub(hex, i, i + 1), 16)
    end
    return string.char(0, unpack(out))
  elseif #ep < 255 then
    return string.char(#ep) .. ep
  end
  return string.char(255) .. bytes_of(#ep, 2) .. ep
end

-- Returns the endpoint and the position after it.
local function endpoint_at(s, pos)
  local tag = string.byte(s, pos)
  if tag == 0 then
    local b = { string.byte(s, pos + 1, pos + 16) }
    local hex = string.format(string.rep('%02x', 16), unpack(b))
    return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16)
      .. '-' .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32), pos + 17
  elseif tag < 255 then
    return string.sub(s, pos + 1, pos + tag), pos + 1 + tag
  end
  local length = number_at(s, pos + 1, 2)
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
  local flags = string.byte(value, 1)
  s.published_online = has(flags, PUBLISHED)
  s.top_online = has(flags, TOP_ONLINE)
  s.version = number_at(value, 8, 4)
  s.changed_at = number_at(value, 12, 6)
  if s.changed_at == 0 then
    s.changed_at = nil
  end
  if has(flags, TOP) then
    s.top = number_at(value, 18, 7)
  end
  s.top_at = number_at(value, 25, 6)
  local pos = 31
  if has(flags, DEADLINE) then
    s.deadline = number_at(value, pos, 6)
    s.deadline_event = string.format('%d', number_at(value, pos + 6, 7))
    pos = pos + 13
  end
  if has(flags, OFF) then
    s.off_floor = number_at(value, pos, 7)
    s.off_endpoint, pos = endpoint_at(value, pos + 7)
  end
  if has(flags, FORGOTTEN) then
    s.forgotten_floor = number_at(value, pos, 7)
    pos = pos + 7
  end
  for _, kind in ipairs({ 'connected', 'tombstones' }) do
    local count = string.byte(value, pos)
    pos = pos + 1
    if count == 255 then
      count = number_at(value, pos, 2)
      pos = pos + 2
    end
    for _ = 1, count do
      local ep
      ep, pos = endpoint_at(value, pos)
      s[kind][ep] = { event_id = number_at(value, pos, 7), at = number_at(value, pos + 7, 6) }
      pos = pos + 13
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
    string.char(flags), bytes_of(due or 0, 6), bytes_of(s.version, 4),
    bytes_of(s.changed_at or 0, 6), bytes_of(s.top or 0, 7), bytes_of(s.top_at or 0, 6),
  }
  if s.deadline then
    parts[#parts + 1] = bytes_of(s.deadline, 6) .. bytes_of(tonumber(s.deadline_event), 7)
  end
  if s.off_floor then
    parts[#parts + 1] = bytes_of(s.off_floor, 7) .. endpoint_bytes(s.off_endpoint)
  end
  if s.forgotten_floor then
    parts[#parts + 1] = bytes_of(s.forgotten_floor, 7)
  end
  for _, kind in ipairs({ 'connected', 'tombstones' }) do
    local count = s.count[kind]
    parts[#parts + 1] = count < 255 and string.char(count) or string.char(255) .. bytes_of(count, 2)
    for ep, m in pairs(s[kind]) do
      parts[#parts + 1] = endpoint_bytes(ep) .. bytes_of(m.event_id, 7) .. bytes_of(m.at, 6)
    end
  end
  return table.concat(parts)
end

-- When a stored value is next due (0: never), without decoding the rest of it.
local function due_of(value)
  return number_at(value, 2, 6)
end

-- A 48-bit hash of an identity, for its graveyard record (two 24-bit halves of djb2 and
-- sdbm, each kept below 2^32 so that doubles compute them exactly).
local function graveyard_key(name)
  local a, b = 5381, 0
  for i = 1, #name do
    local c = string.byte(name, i)
    a = (a * 33 + c) % 4294967296
    b = (c + b * 65599) % 4294967296
  end
  return bytes_of(math.floor(a / 256), 3) .. bytes_of(math.floor(b / 256), 3)
end

-- The record's position in the graveyard (1-based), and whether it is there. Keys compare
-- as numbers: Lua compares strings by the locale's collation, not byte by byte.
local function graveyard_find(blob, key)
  local wanted = number_at(key, 1, 6)
  local low, high = 0, #blob / RECORD - 1
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local at = number_at(blob, mid * RECORD + 1, 6)
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
  return bytes_of(s.version, 4) .. bytes_of(s.top or 0, 7) .. bytes_of(s.changed_at or 0, 6)
end

-- The state of a compacted identity, from its record (rules.py: compact).
local function from_record(record)
  local s = decode(nil)
  s.version = number_at(record, 7, 4)
  s.top = number_at(record, 11, 7)
  s.changed_at = number_at(record, 18, 6)
  if s.changed_at == 0 then
    s.changed_at = nil
  end
  s.forgotten_floor = s.top
  s.top_at = 0
  s.compacted = true
  return s
end
