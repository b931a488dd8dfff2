-- apply_event.lua: applies one endpoint_connected / endpoint_disconnected to an identity.
-- KEYS: see state.lua.   ARGV: 1 identity, 2-8 the page's (state.lua), then 9 EndpointId,
--   packed as codec.lua's endpoint_bytes packs it (by the service: presence/store/endpoints.py)
--   10 EventId   11 IsIdentityOnline ('1'/'0')   12 '1' connected, '0' disconnected
-- Returns {status, flap, expired, message...}: status 'applied', 'duplicate' or 'stale'; flap
-- '1' when the event cancelled a pending offline (a flap suppressed), else '0'; the number of
-- endpoints that expired on the way; then each change published, in order.

local ctx = context(KEYS, ARGV, 2)
about(ctx, ARGV[1])
local s = load(ctx)
advance(ctx, s)
local ep, event_id = ARGV[9], tonumber(ARGV[10])
local status = classify(s, ep, event_id)
if status == 'applied' then
  apply(ctx, s, ep, event_id, ARGV[11] == '1', ARGV[12] == '1')
  settle(ctx, s, ARGV[10])
end
-- A duplicate or stale event that found nothing due writes nothing (not even the same
-- state again): no replication, no change of the page's bytes.
if s.touched or status == 'applied' then
  save(ctx, s, KEYS)
end
return { status, ctx.flap or '0', ctx.expired, unpack(ctx.messages) }
