-- read.lua: what queries answer of some identities, as they are stored (the sweeper keeps
-- them up to date).
-- KEYS: for each identity, its page then its page's graveyard.   ARGV: the identities.
-- Returns, for each, {online, pending_offline (1/0), version, last EventId, changed_at (ms),
-- connected endpoint...}: numbers, '' for what it does not have; endpoints in no order.

local out = {}
for i, name in ipairs(ARGV) do
  local value = redis.call('HGET', KEYS[2 * i - 1], name)
  local online, pending, version, top, changed_at, endpoints = false, false, 0, false, false, {}
  if value then
    online, pending, version, top, changed_at, endpoints = answer_of(value)
  else
    local blob = redis.call('GET', KEYS[2 * i])
    if blob then
      local at, found = graveyard_find(blob, graveyard_key(name))
      if found then
        local s = from_record(string.sub(blob, at, at + RECORD - 1))
        version, top, changed_at = s.version, s.top, s.changed_at or false
      end
    end
  end
  local row = { online and 1 or 0, pending and 1 or 0, version, top or '', changed_at or '' }
  for _, ep in ipairs(endpoints) do
    row[#row + 1] = ep
  end
  out[i] = row
end
return out
