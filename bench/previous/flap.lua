-- flap.lua: rule 3 after an applied event, where a rebalancing flap is suppressed
-- (rules.py: settle).

-- Going online is published at once; going offline waits for the grace deadline, and coming
-- back before it (the hourly rebalancing disconnect/connect) cancels the deadline without a
-- word: ctx.flap is set.
local function settle(ctx, s, event_id)
  if live(s) then
    if not s.published_online then
      publish(ctx, s, true, 'connected', event_id)
    elseif s.deadline then
      s.deadline = nil
      s.deadline_event = nil
      ctx.flap = '1'
    end
  elseif s.published_online and not s.deadline then
    if ctx.grace == 0 then
      publish(ctx, s, false, 'disconnected', event_id)
    else
      s.deadline = ctx.now + ctx.grace
      s.deadline_event = event_id
    end
  end
end
