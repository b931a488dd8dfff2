-- codec.lua: an identity's state in as few bytes as the rules allow: a field of its page (a
-- hash of the identities of one bucket and page of a service), and, once compacted, a record
-- of its page's graveyard. Small values keep a page in Redis' compact listpack encoding
-- (values up to 64 bytes, up to 128 of them): one online identity with one UUID endpoint is
-- 35 bytes here, 37 after a rebalancing flap, against some 250 as text fields.
--
-- Inside the rules an endpoint is its packed form, the bytes it is stored as: 0 and 16 bytes
-- for a lowercase UUID, else its length (1 to 254) and its bytes, or 255, a 2-byte length and
-- its bytes (endpoint_bytes; endpoint_text gives it back).
--
-- A value, in the layout written now (flag 64), numbers as varints (7 bits a byte, the low
-- group first, a set high bit saying more follow; exact up to 2^53) and most of them as
-- differences: times from top_at, EventIds below top (zz: zigzag-coded, for either sign);
-- top_at itself in 6 bytes, big-endian (a time's varint is as long, and slower to read):
--   flags(1) top_at(6) version [top] due changed_at [deadline(zz) top-deadline_event(zz)]
--   [top-forgotten_floor(zz)] connected count (endpoint top-event_id(zz) at(zz))*
--   tombstone count (the same)* [top-off_floor(zz) off_endpoint]
-- due and changed_at: 0 for none, else 1 + zz from top_at. off_endpoint: with flag 128 the
-- position (1-based, in the order written) of the mark of the same endpoint (a flap leaves
-- it connected), else the endpoint.
-- flags: 1 published online, 2 top online, 4 a deadline, 8 an off floor, 16 a forgotten
-- floor, 32 a top, 64 this layout, 128 off_endpoint as a mark's position. due: when the
-- sweeper next has something to do for it (none: nothing).
--
-- The layout written before it (no flag 64), read still and rewritten at the next write: the
-- same fields big-endian in fixed widths (times in ms, EventIds in 7 bytes):
--   flags(1) due(6) version(4) changed_at(6) top(7) top_at(6)
--   [deadline(6) deadline_event(7)] [off_floor(7) off_endpoint] [forgotten_floor(7)]
--   connected count (endpoint event_id(7) at(6))*   tombstone count (the same)*
-- changed_at and due 0 for none; a count one byte up to 254, else 255 and two bytes.
--
-- A graveyard is one string of sorted 23-byte records: the identity's 6-byte hash,
-- version(4), top(7), changed_at(6).

-- A number as Redis and the service read it: an integer's digits, never Lua's %.14g.
local function fmt(n)
  return string.format('%d', n)
end

local PUBLISHED, TOP_ONLINE, DEADLINE, OFF, FORGOTTEN, TOP = 1, 2, 4, 8, 16, 32
local VARINTS, OFF_MARK = 64, 128
-- The two kinds of an identity's endpoint marks, in the order they are stored.
local KINDS = { 'connected', 'tombstones' }
local RECORD = 23

-- Redis' struct library packs and unpacks the fixed-width numbers in C, several at a time
-- (a quarter of the cost of doing it a byte at a time in Lua). The embedded store's Lua has
-- no struct: the same, for the formats used here ('>' then B and I<n>), in Lua.
-- Bound by bind_packing on the first call, not when this file is read: a library of Redis
-- functions runs its top level at FUNCTION LOAD, where no global but `redis` exists. With
-- them, the string functions the rules call most: an upvalue costs less than a global's
-- field looked up at every call.
local pack, unpack_at
local byte, sub, char, concat

local function widths(format)
  local out = {}
  for kind, n in string.gmatch(format, '([BI])(%d*)') do
    out[#out + 1] = kind == 'B' and 1 or tonumber(n)
  end
  return out
end

local function lua_pack(format, ...)
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

local function lua_unpack_at(format, s, pos)
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

local function bind_packing()
  byte, sub, char, concat = string.byte, string.sub, string.char, table.concat
  local struct = rawget(_G, 'struct')
  if struct then
    pack, unpack_at = struct.pack, struct.unpack
  else
    pack, unpack_at = lua_pack, lua_unpack_at
  end
end

local function has(flags, bit)
  return flags % (bit * 2) >= bit
end

-- A lowercase UUID (8-4-4-4-12 hexadecimal digits), written out: a script runs this file at
-- every call, and a library's top level cannot reach string.rep.
local UUID = '^[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]%-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
  .. '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$'

-- An endpoint's packed form, from its text. A webhook's comes packed so already (the service
-- packs it: presence/store/endpoints.py); this packs those that migrate.lua moves.
local function endpoint_bytes(ep)
  if #ep == 36 and string.find(ep, UUID) then
    return '\0' .. pack('>I4I4I4I4', tonumber(sub(ep, 1, 8), 16),
      tonumber(sub(ep, 10, 13) .. sub(ep, 15, 18), 16),
      tonumber(sub(ep, 20, 23) .. sub(ep, 25, 28), 16), tonumber(sub(ep, 29, 36), 16))
  elseif #ep < 255 then
    return char(#ep) .. ep
  end
  return '\255' .. pack('>I2', #ep) .. ep
end

-- The packed endpoint at pos (its bytes as stored), and the position after it.
local function endpoint_at(s, pos)
  local tag = byte(s, pos)
  local stop
  if tag == 0 then
    stop = pos + 16
  elseif tag < 255 then
    stop = pos + tag
  else
    stop = pos + 2 + unpack_at('>I2', s, pos + 1)
  end
  return sub(s, pos, stop), stop + 1
end

-- An endpoint's text, from its packed form.
local function endpoint_text(key)
  local tag = byte(key, 1)
  if tag == 0 then
    local a, b, c, d = unpack_at('>I4I4I4I4', key, 2)
    return string.format('%08x-%04x-%04x-%04x-%04x%08x', a, math.floor(b / 65536), b % 65536,
      math.floor(c / 65536), c % 65536, d)
  elseif tag < 255 then
    return sub(key, 2)
  end
  return sub(key, 4)
end

-- An identity never seen. The fields absent at first are named too (nil), so that the
-- table is made at its full size at once, not grown as they are set. The was_ fields keep
-- what it was when read: stored (in its page), compacted, published online, pending
-- offline, its connected endpoints and when it was due (0: never), from which a write
-- brings the counters and its page's due in line (state.lua).
local function empty_state()
  return {
    connected = {}, tombstones = {}, count = { connected = 0, tombstones = 0 },
    version = 0, published_online = false, top_online = false, compacted = false,
    top = nil, top_at = nil, changed_at = nil, deadline = nil, deadline_event = nil,
    off_floor = nil, off_endpoint = nil, forgotten_floor = nil, touched = nil,
    was_stored = false, was_compacted = false, was_online = false, was_pending = false,
    was_endpoints = 0, was_due = 0,
  }
end

-- The layout written before flag 64, read (fixed widths, big-endian).
local function decode_fixed(value, s, flags)
  local due, version, changed_at, top, top_at, pos = unpack_at('>I6I4I6I7I6', value, 2)
  s.was_due = due
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
    s.deadline_event = fmt(event)
  end
  if has(flags, OFF) then
    s.off_floor, pos = unpack_at('>I7', value, pos)
    s.off_endpoint, pos = endpoint_at(value, pos)
  end
  if has(flags, FORGOTTEN) then
    s.forgotten_floor, pos = unpack_at('>I7', value, pos)
  end
  for k = 1, 2 do
    local kind = KINDS[k]
    local count = byte(value, pos)
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

-- A varint at pos, and the position after it.
local function varint_at(s, pos)
  local b = byte(s, pos)
  if b < 128 then
    return b, pos + 1
  end
  local n, scale = b - 128, 128
  while true do
    pos = pos + 1
    b = byte(s, pos)
    if b < 128 then
      return n + b * scale, pos + 1
    end
    n = n + (b - 128) * scale
    scale = scale * 128
  end
end

local function zigzag(n)
  return n >= 0 and 2 * n or -2 * n - 1
end

local function unzigzag(z)
  if z % 2 == 0 then
    return z / 2
  end
  return -(z + 1) / 2
end

-- Most differences fit one byte: read without the general case's call.
local function zigzag_at(s, pos)
  local z = byte(s, pos)
  if z < 128 then
    return z % 2 == 0 and z / 2 or -(z + 1) / 2, pos + 1
  end
  z, pos = varint_at(s, pos)
  return unzigzag(z), pos
end

-- The head of a value of this layout: version, top_at, top (0: none), due (0: none),
-- changed_at (nil: none), and the position after them.
local function head_at(value, flags)
  local version, top_at, top, due, changed, pos
  top_at, pos = unpack_at('>I6', value, 2)
  version, pos = varint_at(value, pos)
  top = 0
  if flags % 64 >= TOP then
    top, pos = varint_at(value, pos)
  end
  due, pos = varint_at(value, pos)
  if due ~= 0 then
    due = top_at + unzigzag(due - 1)
  end
  changed, pos = varint_at(value, pos)
  if changed ~= 0 then
    changed = top_at + unzigzag(changed - 1)
  else
    changed = nil
  end
  return version, top_at, top, due, changed, pos
end

-- (Its flags tested inline, not by has: this runs at every event.)
local function decode_varints(value, s, flags)
  local top, pos
  s.version, s.top_at, top, s.was_due, s.changed_at, pos = head_at(value, flags)
  if flags % 64 >= TOP then
    s.top = top
  end
  local base = s.top_at
  if flags % 8 >= DEADLINE then
    local at, below
    at, pos = zigzag_at(value, pos)
    below, pos = zigzag_at(value, pos)
    s.deadline, s.deadline_event = base + at, fmt(top - below)
  end
  if flags % 32 >= FORGOTTEN then
    local below
    below, pos = zigzag_at(value, pos)
    s.forgotten_floor = top - below
  end
  local order = flags >= OFF_MARK and {}
  for k = 1, 2 do
    local kind = KINDS[k]
    local count
    count, pos = varint_at(value, pos)
    local marks = s[kind]
    for _ = 1, count do
      local ep, below, at
      ep, pos = endpoint_at(value, pos)
      below, pos = zigzag_at(value, pos)
      at, pos = zigzag_at(value, pos)
      marks[ep] = { event_id = top - below, at = base + at }
      if order then
        order[#order + 1] = ep
      end
    end
    s.count[kind] = count
  end
  if flags % 16 >= OFF then
    local below
    below, pos = zigzag_at(value, pos)
    s.off_floor = top - below
    if order then
      local n
      n, pos = varint_at(value, pos)
      s.off_endpoint = order[n]
    else
      s.off_endpoint, pos = endpoint_at(value, pos)
    end
  end
  return s
end

-- What a state was, in its was_ fields: read from its page (stored), from its page's
-- graveyard, or made from a migrated identity.
local function remember(s, stored)
  s.was_stored = stored
  s.was_compacted = s.compacted
  s.was_online = s.published_online
  s.was_pending = s.deadline ~= nil
  s.was_endpoints = s.count.connected
  return s
end

-- The state table of rules.py's Identity, from a value of either layout read from its page
-- (nil: never seen).
local function decode(value)
  local s = empty_state()
  if not value then
    return s
  end
  local flags = byte(value, 1)
  s.published_online = flags % 2 == PUBLISHED
  s.top_online = flags % 4 >= TOP_ONLINE
  if flags % 128 >= VARINTS then
    decode_varints(value, s, flags)
  else
    decode_fixed(value, s, flags)
  end
  return remember(s, true)
end

-- Puts v's varint in buf after its first n bytes (as numbers); returns how many it has then.
local function put_varint(buf, n, v)
  while v >= 128 do
    local low = v % 128
    n = n + 1
    buf[n] = low + 128
    v = (v - low) / 128
  end
  buf[n + 1] = v
  return n + 1
end

local function put_zigzag(buf, n, v)
  return put_varint(buf, n, v >= 0 and 2 * v or -2 * v - 1)
end

-- What encode fills, kept from call to call (a Redis function's upvalues last as long as its
-- library): the numbers of the piece being made, and the value's pieces. Tables grown anew at
-- every call cost more than what is written in them.
local BYTES, PIECES = {}, {}

-- The value of a state, always in the varint layout. Numbers gather in BYTES and go into
-- PIECES as one string before each endpoint (the first piece, the flags, is made last).
local function encode(s, due)
  local top, base = s.top or 0, s.top_at or 0
  local buf, out = BYTES, PIECES
  out[2] = pack('>I6', base)
  local n, k = put_varint(buf, 0, s.version), 2
  if s.top then
    n = put_varint(buf, n, top)
  end
  n = put_varint(buf, n, (due and due ~= 0) and 1 + zigzag(due - base) or 0)
  n = put_varint(buf, n, s.changed_at and 1 + zigzag(s.changed_at - base) or 0)
  if s.deadline then
    n = put_zigzag(buf, n, s.deadline - base)
    n = put_zigzag(buf, n, top - tonumber(s.deadline_event))
  end
  if s.forgotten_floor then
    n = put_zigzag(buf, n, top - s.forgotten_floor)
  end
  local off, mark, written = s.off_endpoint, nil, 0
  for i = 1, 2 do
    local kind = KINDS[i]
    n = put_varint(buf, n, s.count[kind])
    for ep, m in pairs(s[kind]) do
      out[k + 1], out[k + 2], k = char(unpack(buf, 1, n)), ep, k + 2
      n = put_zigzag(buf, 0, top - m.event_id)
      n = put_zigzag(buf, n, m.at - base)
      written = written + 1
      if ep == off then
        mark = written
      end
    end
  end
  if s.off_floor then
    n = put_zigzag(buf, n, top - s.off_floor)
    if mark then
      n = put_varint(buf, n, mark)
    else
      out[k + 1], out[k + 2], k, n = char(unpack(buf, 1, n)), off, k + 2, 0
    end
  end
  out[k + 1] = char(unpack(buf, 1, n))
  out[1] = char(VARINTS + (s.published_online and PUBLISHED or 0)
    + (s.top_online and TOP_ONLINE or 0) + (s.deadline and DEADLINE or 0)
    + (s.off_floor and OFF or 0) + (s.forgotten_floor and FORGOTTEN or 0)
    + (s.top and TOP or 0) + ((s.off_floor and mark) and OFF_MARK or 0))
  return concat(out, '', 1, k + 1)
end

-- The position after the endpoint at pos, without making it.
local function after_endpoint(s, pos)
  local tag = byte(s, pos)
  if tag == 0 then
    return pos + 17
  elseif tag < 255 then
    return pos + 1 + tag
  end
  return pos + 3 + unpack_at('>I2', s, pos + 1)
end

-- The connected endpoints' texts of a value of the layout before flag 64 at pos.
local function fixed_endpoints_at(value, flags, pos)
  if has(flags, DEADLINE) then
    pos = pos + 13
  end
  if has(flags, OFF) then
    pos = after_endpoint(value, pos + 7)
  end
  if has(flags, FORGOTTEN) then
    pos = pos + 7
  end
  local count = byte(value, pos)
  pos = pos + 1
  if count == 255 then
    count, pos = unpack_at('>I2', value, pos)
  end
  local endpoints = {}
  for i = 1, count do
    local ep
    ep, pos = endpoint_at(value, pos)
    endpoints[i] = endpoint_text(ep)
    pos = pos + 13
  end
  return endpoints
end

-- What a query answers of a value (read.lua), without the rest of decode's work: whether it
-- is published online and pending offline, its version, highest EventId (false: none),
-- last change (false: none), and its connected endpoints.
local function answer_of(value)
  local flags = byte(value, 1)
  local _, version, changed_at, top, endpoints
  if has(flags, VARINTS) then
    local pos
    version, _, top, _, changed_at, pos = head_at(value, flags)
    changed_at = changed_at or 0
    if has(flags, DEADLINE) then
      _, pos = varint_at(value, pos)
      _, pos = varint_at(value, pos)
    end
    if has(flags, FORGOTTEN) then
      _, pos = varint_at(value, pos)
    end
    local count
    count, pos = varint_at(value, pos)
    endpoints = {}
    for i = 1, count do
      local ep
      ep, pos = endpoint_at(value, pos)
      endpoints[i] = endpoint_text(ep)
      _, pos = varint_at(value, pos)
      _, pos = varint_at(value, pos)
    end
  else
    local pos
    _, version, changed_at, top, _, pos = unpack_at('>I6I4I6I7I6', value, 2)
    endpoints = fixed_endpoints_at(value, flags, pos)
  end
  local online = has(flags, PUBLISHED)
  return online, online and has(flags, DEADLINE), version, has(flags, TOP) and top,
    changed_at ~= 0 and changed_at, endpoints
end

-- Its version, without decoding the rest of it (the listing with versions).
local function version_of(value)
  if has(byte(value, 1), VARINTS) then
    return (varint_at(value, 8))
  end
  return (unpack_at('>I4', value, 8))
end

-- When a stored value is next due (0: never), without decoding the rest of it.
local function due_of(value)
  local flags = byte(value, 1)
  if has(flags, VARINTS) then
    local _, _, _, due = head_at(value, flags)
    return due
  end
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
    local c = byte(name, i)
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
  local s = empty_state()
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
