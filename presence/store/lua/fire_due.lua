-- fire_due.lua: the sweeper's visit to a page whose time has come: for every identity of it
-- that is due, fires its offline deadline, expires what no event has named for the TTL,
-- compacts what is left of it, publishing what that changes; then reschedules the page.
-- KEYS: see state.lua.
-- ARGV: the page's (state.lua).
-- Returns {'done', expired, message...} (expired: how many endpoints expired), or {'not_due'}
-- when another replica (or an event) got there first: the due pages are read inside the
-- script, so each deadline fires exactly once.

local ctx = context(KEYS, ARGV, 1)
local score = redis.call('ZSCORE', KEYS[4], ctx.member)
if not score or tonumber(score) > ctx.now then
  return { 'not_due' }
end
local flat = redis.call('HGETALL', KEYS[1])
local next_due
for i = 1, #flat, 2 do
  local due = due_of(flat[i + 1])
  if due ~= 0 and due <= ctx.now then
    local name = flat[i]
    about(ctx, name)
    local s = decode(flat[i + 1])
    advance(ctx, s)
    due = store(ctx, s, KEYS) or 0
  end
  if due ~= 0 and (not next_due or due < next_due) then
    next_due = due
  end
end
if next_due then
  redis.call('ZADD', KEYS[4], fmt(next_due), ctx.member)
else
  redis.call('ZREM', KEYS[4], ctx.member)
end
return { 'done', ctx.expired, unpack(ctx.messages) }
