-- expiry.lua: rule 4, what no event has named for the endpoint TTL is dropped, so a lost
-- endpoint_disconnected cannot leave a ghost online forever; and an identity left with
-- nothing but its history keeps only that (rules.py: expire, compact).

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
    s.touched = true
    s.top_online = false
    raise_forgotten_floor(s, s.top)
    expired = true
  end
  return expired
end

-- Settled for the TTL since its last event, an identity keeps only its version, the time of
-- its last change and its highest EventId, which becomes the forgotten floor: its page lets
-- it go, a record of its graveyard keeps that.
local function compact(ctx, s)
  if ctx.ttl <= 0 or not s.top or s.compacted or not settled(s) or s.top_at + ctx.ttl > ctx.now then
    return
  end
  s.touched = true
  s.off_floor = nil
  s.off_endpoint = nil
  s.forgotten_floor = s.top
  s.compacted = true
end
