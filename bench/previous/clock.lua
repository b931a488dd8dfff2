-- clock.lua: the time every rule goes by, and how a change shows it.

-- The Redis server's time in milliseconds: the clock of stream IDs, and so of the feed.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Now in milliseconds: the caller's clock when it passes one (tests move time by hand),
-- otherwise the Redis server's, so replicas whose clocks disagree still agree on every
-- deadline.
local function clock(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  return server_ms()
end

-- ISO 8601 in UTC with milliseconds (days to civil date: Howard Hinnant's algorithm), as
-- presence/timestamps.py writes it.
local function iso(ms)
  local seconds = math.floor(ms / 1000)
  local millis = ms - seconds * 1000
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local hour = math.floor(rest / 3600)
  local minute = math.floor((rest - hour * 3600) / 60)
  local second = rest - hour * 3600 - minute * 60
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then
    year = year + 1
  end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ',
    year, month, day, hour, minute, second, millis)
end
