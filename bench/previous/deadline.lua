-- deadline.lua: rules 3 and 4 as time passes, where a pending offline is finally published
-- (rules.py: fire_deadline, advance).

-- A passed deadline publishes offline ('disconnected') if the identity is still not live;
-- otherwise, if expiry alone left a published-online identity with nothing, offline is
-- published at once ('expired').
local function fire_deadline(ctx, s, expired)
  if s.deadline and s.deadline <= ctx.now and not live(s) then
    publish(ctx, s, false, 'disconnected', s.deadline_event)
  elseif expired and not s.deadline and s.published_online and not live(s) then
    publish(ctx, s, false, 'expired', nil)
  end
end

-- Applies what the passage of time has made due. Run before every event too, so the outcome
-- never depends on when the sweeper last came by.
local function advance(ctx, s)
  fire_deadline(ctx, s, expire(ctx, s))
  compact(ctx, s)
end
