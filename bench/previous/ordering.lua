-- ordering.lua: rules 1 and 2, is an event new, a repeat, or overtaken (rules.py: classify)?

-- An event applies only if its EventId is above what its endpoint has, and above the
-- identity's last IsIdentityOnline=false; an endpoint no longer remembered is stale up to
-- the forgotten floor.
local function classify(s, ep, event_id)
  local known = s.connected[ep] or s.tombstones[ep]
  if known then
    if known.event_id == event_id then
      return 'duplicate'
    elseif known.event_id > event_id then
      return 'stale'
    end
  end
  if s.off_floor then
    if event_id == s.off_floor and s.off_endpoint == ep then
      return 'duplicate'
    elseif event_id <= s.off_floor then
      return 'stale'
    end
  end
  if not known and s.forgotten_floor and event_id <= s.forgotten_floor then
    return 'stale'
  end
  return 'applied'
end
