-- reachability.lua: applies one endpoint_connected / endpoint_disconnected to an identity.
-- KEYS and ARGV 1-8: see prelude.lua. Then:
--   ARGV 9 EndpointId   10 EventId   11 IsIdentityOnline ('1'/'0')   12 '1' connected, '0' disconnected
-- Returns {status, flap, expired, message...}: status 'applied', 'duplicate' or 'stale'; flap
-- '1' when the event cancelled a pending offline (a flap suppressed), else '0'; the number of
-- endpoints that expired on the way; then each change published, in order.

-- Per section 4 of the contract: an event applies only if its EventId is above what its endpoint
-- has, and above the identity's last IsIdentityOnline=false.
local function classify(s, ep, id)
  local known = s.e[ep] or s.t[ep]
  if known then
    if known.id == id then
      return 'duplicate'
    elseif known.id > id then
      return 'stale'
    end
  end
  local off = tonumber(s.f.off)
  if off then
    if id == off and s.f.oe == ep then
      return 'duplicate'
    elseif id <= off then
      return 'stale'
    end
  end
  if not known and s.f.tf and id <= tonumber(s.f.tf) then
    return 'stale'
  end
  return 'applied'
end

local function apply(ctx, s, ep, id, online, connected)
  if connected then
    drop(s, 't', ep)
    put(s, 'e', ep, id, ctx.now)
  else
    drop(s, 'e', ep)
    bury(s, ep, id, ctx.now)
  end
  if not online then
    -- IsIdentityOnline=false: nothing at or below this EventId is connected any more, and
    -- the 'off' mark keeps every older event from bringing an endpoint back.
    setf(s, 'off', fmt(id))
    setf(s, 'oe', ep)
    for name, e in pairs(s.e) do
      if e.id <= id then
        drop(s, 'e', name)
      end
    end
    for name, t in pairs(s.t) do
      if t.id <= id then
        drop(s, 't', name)
      end
    end
  end
  local top = tonumber(s.f.top)
  if not top or id > top then
    setf(s, 'top', fmt(id))
    setf(s, 'ton', online and '1' or '0')
    setf(s, 'tat', fmt(ctx.now))
  end
end

-- Going online is published at once; going offline waits for the grace deadline, and coming
-- back before it (the hourly rebalancing flap) cancels the deadline without a word.
local function settle(ctx, s, event_id)
  local on = s.f.on == '1'
  if live(s) then
    if not on then
      publish(ctx, s, true, 'connected', event_id)
    elseif s.f.dl then
      unsetf(s, 'dl')
      unsetf(s, 'de')
      ctx.flap = '1'
    end
  elseif on and not s.f.dl then
    if ctx.grace == 0 then
      publish(ctx, s, false, 'disconnected', event_id)
    else
      setf(s, 'dl', fmt(ctx.now + ctx.grace))
      setf(s, 'de', event_id)
    end
  end
end

local ctx, s = context(ARGV), load(KEYS[1])
advance(ctx, s)
local ep, id = ARGV[9], tonumber(ARGV[10])
local status = classify(s, ep, id)
if status == 'applied' then
  apply(ctx, s, ep, id, ARGV[11] == '1', ARGV[12] == '1')
  settle(ctx, s, ARGV[10])
end
finish(ctx, s, KEYS)
return { status, ctx.flap or '0', ctx.expired, unpack(ctx.messages) }
