-- list.lua: the identities published online in some pages of one bucket, for the listing.
-- KEYS: the bucket's pages, in order.   ARGV: 1 the first page to read (1-based)   2 enough:
-- pages are read whole until this many names are found   3 '1': each name with its version.
-- Returns {page, count, name..., page, count, name...} (pages 1-based, names in no order:
-- Lua orders strings by the locale's collation, Python sorts them by code point); with
-- versions, each name is followed by its version.

local versions = ARGV[3] == '1'
local out = {}
local found = 0
for page = tonumber(ARGV[1]), #KEYS do
  local flat = redis.call('HGETALL', KEYS[page])
  local names = {}
  for i = 1, #flat, 2 do
    if string.byte(flat[i + 1], 1) % 2 == 1 then
      names[#names + 1] = flat[i]
      if versions then
        names[#names + 1] = version_of(flat[i + 1])
      end
    end
  end
  local count = versions and #names / 2 or #names
  out[#out + 1] = page
  out[#out + 1] = count
  for _, name in ipairs(names) do
    out[#out + 1] = name
  end
  found = found + count
  if found >= tonumber(ARGV[2]) then
    break
  end
end
return out
