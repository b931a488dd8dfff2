-- read.lua: what queries answer of some identities, as they are stored (the sweeper keeps
-- them up to date).
-- KEYS: for each identity, its page then its page's graveyard.   ARGV: the identities.
-- Returns, for each, {online, pending_offline ('1'/'0'), version, last EventId, changed_at
-- (ms), connected endpoint...}, '' for what it does not have; endpoints sorted.

local out = {}
for i, name in ipairs(ARGV) do
  local value = redis.call('HGET', KEYS[2 * i - 1], name)
  local s
  if value then
    s = decode(value)
  else
    s = decode(nil)
    local blob = redis.call('GET', KEYS[2 * i])
    if blob then
      local at, found = graveyard_find(blob, graveyard_key(name))
      if found then
        s = from_record(string.sub(blob, at, at + RECORD - 1))
      end
    end
  end
  local row = {
    s.published_online and '1' or '0', (s.published_online and s.deadline) and '1' or '0',
    fmt(s.version), s.top and fmt(s.top) or '', s.changed_at and fmt(s.changed_at) or '',
  }
  local endpoints = {}
  for ep in pairs(s.connected) do
    endpoints[#endpoints + 1] = ep
  end
  -- Sorted by byte, as Python sorts (Lua's own order goes by the locale's collation).
  table.sort(endpoints, function(a, b)
    local n = math.min(#a, #b)
    for k = 1, n do
      local x, y = string.byte(a, k), string.byte(b, k)
      if x ~= y then
        return x < y
      end
    end
    return #a < #b
  end)
  for _, ep in ipairs(endpoints) do
    row[#row + 1] = ep
  end
  out[i] = row
end
return out
