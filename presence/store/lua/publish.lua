-- publish.lua: a presence change, announced (rules.py: publish).

-- Rule 5: every change gets the next version, ends any pending offline, and is announced
-- from inside the script that stores it, so it is announced once, and only if it is stored:
-- on both pub/sub channels, and appended to the service's change feed in this bucket (a
-- stream whose IDs are the Redis server's time: what a feed cursor counts in). Changes older
-- than the retention are trimmed as new ones come, and a feed no change has come to for that
-- long expires.
local function publish(ctx, s, online, reason, event_id)
  s.touched = true
  s.version = s.version + 1
  s.published_online = online
  s.changed_at = ctx.now
  s.deadline = nil
  s.deadline_event = nil
  -- Every change of one script happens at the same now: its text is made once.
  ctx.at = ctx.at or iso(ctx.now)
  if not ctx.head then
    ctx.one = ctx.all .. ':' .. ctx.sid .. ':' .. ctx.identity
    ctx.head = '{"service_sid":"' .. ctx.sid .. '","identity":' .. json_string(ctx.identity)
  end
  local version = fmt(s.version)
  local message = ctx.head .. ',"online":' .. (online and 'true' or 'false')
    .. ',"reason":"' .. reason .. '","event_id":' .. (event_id or 'null')
    .. ',"version":' .. version .. ',"changed_at":"' .. ctx.at .. '"}'
  -- On the feed, the change's fields alone (the reader writes the message again, see
  -- presence/store/base.py FeedEntry): a quarter of the message's bytes, kept for the
  -- retention. The same fields in every entry let Redis store their names once per node.
  -- Written before the message is published: on a master demoted to a replica (a failover)
  -- the write fails with READONLY and ends the script before anything is announced.
  -- The trim point and the feed's expiry are the same for every change of one script: made
  -- once (a sweep fires many in one call).
  -- Numbers go to Redis as text: it would format a Lua number with '%.17g' first.
  local first = not ctx.kept
  if first then
    -- now is the server's time already, unless the caller gave its own clock.
    ctx.kept = fmt((ctx.server_now and ctx.now or server_ms()) - tonumber(ctx.retention))
    ctx.now_text = fmt(ctx.now)
  end
  -- Numbered: the bucket's count of the service's changes goes up, and the entry carries it,
  -- so a reader tells from the data whether Redis still holds what its cursor saw
  -- (presence/store/feed.py).
  local number = redis.call('INCR', ctx.count)
  redis.call('XADD', ctx.feed, 'MINID', '~', ctx.kept, '*', 'i', ctx.identity,
    'o', online and '1' or '0', 'r', reason, 'e', event_id or '', 'v', version,
    't', ctx.now_text, 'n', fmt(number))
  if first then
    redis.call('PEXPIRE', ctx.feed, ctx.retention)
  end
  redis.call('PUBLISH', ctx.all, message)
  redis.call('PUBLISH', ctx.one, message)
  ctx.messages[#ctx.messages + 1] = message
end
