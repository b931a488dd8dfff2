-- expiry.lua: rule 4, what no event has named for the endpoint TTL is dropped, so a lost
-- endpoint_disconnected cannot leave a ghost online forever (rules.py: expire).

-- Returns whether anything that kept the identity online expired; counts the connected
-- endpoints that did in ctx.expired.
local function expire(ctx, s)
  if ctx.ttl <= 0 then
    return false
  end
  local limit = ctx.now - ctx.ttl
  local expired = false
  for ep, m in pairs(s.connected) do
    if m.at <= limit then
      forget(s, 'connected', ep)
      ctx.expired = ctx.expired + 1
      expired = true
    end
  end
  for ep, m in pairs(s.tombstones) do
    if m.at <= limit then
      forget(s, 'tombstones', ep)
    end
  end
  if s.top_online and s.top_at <= limit then
    s.top_online = false
    raise_forgotten_floor(s, s.top)
    expired = true
  end
  return expired
end
