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
-- presence/timestamps.py writes it. Whole numbers are divided as (a - a % b) / b, which is
-- math.floor(a / b) without a call.
local function iso(ms)
  local millis = ms % 1000
  local seconds = (ms - millis) / 1000
  local second = seconds % 60
  local minutes = (seconds - second) / 60
  local minute = minutes % 60
  local hours = (minutes - minute) / 60
  local hour = hours % 24
  local z = (hours - hour) / 24 + 719468
  local doe = z % 146097
  local era = (z - doe) / 146097
  local yoe = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524
    - (doe - doe % 146096) / 146096
  yoe = (yoe - yoe % 365) / 365
  local doy = doe - (365 * yoe + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100)
  local mp = (5 * doy + 2 - (5 * doy + 2) % 153) / 153
  local day = doy - (153 * mp + 2 - (153 * mp + 2) % 5) / 5 + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then
    year = year + 1
  end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ',
    year, month, day, hour, minute, second, millis)
end
