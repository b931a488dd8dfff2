-- inspect.lua: an identity's whole stored state, for the tests and for checking a migration.
-- KEYS: its page, its page's graveyard.   ARGV: 1 the identity.
-- Returns {where, due, version, published_online, changed_at, top, top_online, top_at,
-- deadline, deadline_event, off_floor, off_endpoint, forgotten_floor, {connected endpoint,
-- event_id, at...}, {tombstone, event_id, at...}}: where is 'page', 'graveyard' or 'none';
-- '' for what it does not have; numbers as text.

local function text(v)
  if v == nil then
    return ''
  elseif type(v) == 'boolean' then
    return v and '1' or '0'
  elseif type(v) == 'number' then
    return fmt(v)
  end
  return v
end

local name = ARGV[1]
local value = redis.call('HGET', KEYS[1], name)
local where, s, due = 'none', decode(nil), 0
if value then
  where, s, due = 'page', decode(value), due_of(value)
else
  local blob = redis.call('GET', KEYS[2])
  if blob then
    local at, found = graveyard_find(blob, graveyard_key(name))
    if found then
      where, s = 'graveyard', from_record(string.sub(blob, at, at + RECORD - 1))
    end
  end
end
local marks = {}
for _, kind in ipairs(KINDS) do
  local flat = {}
  for ep, m in pairs(s[kind]) do
    flat[#flat + 1] = endpoint_text(ep)
    flat[#flat + 1] = fmt(m.event_id)
    flat[#flat + 1] = fmt(m.at)
  end
  marks[#marks + 1] = flat
end
return {
  where, text(due), text(s.version), text(s.published_online), text(s.changed_at), text(s.top),
  text(s.top_online), text(s.top_at), text(s.deadline), text(s.deadline_event),
  text(s.off_floor), text(s.off_endpoint and endpoint_text(s.off_endpoint)),
  text(s.forgotten_floor), marks[1], marks[2],
}
