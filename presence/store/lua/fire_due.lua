-- fire_due.lua: the sweeper's visit to one identity whose time in the due set has come: fires
-- its offline deadline, expires what no event has named for the TTL, and reschedules it.
-- KEYS and ARGV 1-9: see state.lua.
-- Returns {'done', expired, message...} (expired: how many endpoints expired), or {'not_due'}
-- when another replica (or an event) got there first: the due set is read inside the script,
-- so each deadline fires exactly once.

local ctx = context(ARGV)
local score = redis.call('ZSCORE', KEYS[4], ARGV[2])
if not score or tonumber(score) > ctx.now then
  return { 'not_due' }
end
local s = load(KEYS[1])
advance(ctx, s)
save(ctx, s, KEYS)
return { 'done', ctx.expired, unpack(ctx.messages) }
