-- apply_event.lua: applies one endpoint_connected / endpoint_disconnected to an identity.
-- KEYS and ARGV 1-9: see state.lua. Then:
--   ARGV 10 EndpointId   11 EventId   12 IsIdentityOnline ('1'/'0')   13 '1' connected, '0' disconnected
-- Returns {status, flap, expired, message...}: status 'applied', 'duplicate' or 'stale'; flap
-- '1' when the event cancelled a pending offline (a flap suppressed), else '0'; the number of
-- endpoints that expired on the way; then each change published, in order.

local ctx = context(ARGV)
local s = load(ctx)
advance(ctx, s)
local ep, event_id = ARGV[10], tonumber(ARGV[11])
local status = classify(s, ep, event_id)
if status == 'applied' then
  apply(ctx, s, ep, event_id, ARGV[12] == '1', ARGV[13] == '1')
  settle(ctx, s, ARGV[11])
end
-- A duplicate or stale event that found nothing due writes nothing (not even the same
-- state again): no replication, no change of the page's bytes.
if s.touched or status == 'applied' then
  save(ctx, s, KEYS)
end
return { status, ctx.flap or '0', ctx.expired, unpack(ctx.messages) }
