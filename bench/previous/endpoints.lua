-- endpoints.lua: rules 1 and 2, what an applied event does to an identity's endpoints
-- (rules.py: live, raise_forgotten_floor, forget, bury, apply).

local MAX_TOMBSTONES = 64

-- Online by the rules: an endpoint connected, or Twilio's word that it is online.
local function live(s)
  return s.count.connected > 0 or s.top_online
end

-- Events of endpoints no longer remembered are stale at or below this EventId, so an endpoint
-- that was forgotten (an old tombstone, an expired endpoint) still cannot come back.
local function raise_forgotten_floor(s, event_id)
  if not s.forgotten_floor or event_id > s.forgotten_floor then
    s.forgotten_floor = event_id
  end
end

local function forget(s, kind, ep)
  raise_forgotten_floor(s, s[kind][ep].event_id)
  drop(s, kind, ep)
end

-- A disconnected endpoint becomes a tombstone; over the cap, the one with the lowest EventId
-- is forgotten.
local function bury(s, ep, event_id, now)
  put(s, 'tombstones', ep, event_id, now)
  if s.count.tombstones > MAX_TOMBSTONES then
    local oldest
    for name, m in pairs(s.tombstones) do
      if not oldest or m.event_id < s.tombstones[oldest].event_id then
        oldest = name
      end
    end
    forget(s, 'tombstones', oldest)
  end
end

local function apply(ctx, s, ep, event_id, online, connected)
  if connected then
    drop(s, 'tombstones', ep)
    put(s, 'connected', ep, event_id, ctx.now)
  else
    drop(s, 'connected', ep)
    bury(s, ep, event_id, ctx.now)
  end
  if not online then
    -- IsIdentityOnline=false: nothing at or below this EventId is connected any more, and
    -- the floor keeps every older event from bringing an endpoint back.
    s.off_floor = event_id
    s.off_endpoint = ep
    for _, kind in ipairs({ 'connected', 'tombstones' }) do
      for name, m in pairs(s[kind]) do
        if m.event_id <= event_id then
          drop(s, kind, name)
        end
      end
    end
  end
  if not s.top or event_id > s.top then
    s.top = event_id
    s.top_online = online
    s.top_at = ctx.now
  end
  s.compacted = false
end
