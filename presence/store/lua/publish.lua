-- publish.lua: a presence change, announced (rules.py: publish).

-- Rule 5: every change gets the next version, ends any pending offline, and is published on
-- both channels from inside the script that stores it: once, and only if it is stored.
local function publish(ctx, s, online, reason, event_id)
  s.version = s.version + 1
  s.published_online = online
  s.changed_at = ctx.now
  s.deadline = nil
  s.deadline_event = nil
  local message = ctx.head .. ',"online":' .. (online and 'true' or 'false')
    .. ',"reason":"' .. reason .. '","event_id":' .. (event_id or 'null')
    .. ',"version":' .. fmt(s.version) .. ',"changed_at":"' .. iso(ctx.now) .. '"}'
  redis.call('PUBLISH', ctx.all, message)
  redis.call('PUBLISH', ctx.one, message)
  ctx.messages[#ctx.messages + 1] = message
end
