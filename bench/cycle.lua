-- wrk script: cycles through a file of pre-built requests, one a line:
--   METHOD <tab> PATH <tab> BODY <tab> Header: value <tab> Header: value ...
-- wrk ... -s bench/cycle.lua URL -- FILE THREADS
-- Thread k of THREADS takes lines k, k+THREADS, ... so no two threads send the same request.
-- Prints one line "WRKJSON {...}" at the end.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function split(line)
  local out, start = {}, 1
  while true do
    local s = string.find(line, "\t", start, true)
    if not s then
      out[#out + 1] = string.sub(line, start)
      return out
    end
    out[#out + 1] = string.sub(line, start, s - 1)
    start = s + 1
  end
end

reqs = {}
n = 0
sent = 0

function init(args)
  local file, nthreads = args[1], tonumber(args[2] or "1")
  local k = 0
  for line in io.lines(file) do
    if k % nthreads == tid then
      local f = split(line)
      local headers = {}
      for j = 4, #f do
        local sep = string.find(f[j], ": ", 1, true)
        headers[string.sub(f[j], 1, sep - 1)] = string.sub(f[j], sep + 2)
      end
      local body = f[3]
      if body == "" then body = nil end
      n = n + 1
      reqs[n] = wrk.format(f[1], f[2], headers, body)
    end
    k = k + 1
  end
end

function request()
  sent = sent + 1
  return reqs[(sent - 1) % n + 1]
end

function done(summary, latency, requests)
  local distinct, total_sent = 0, 0
  for _, t in ipairs(threads) do
    distinct = distinct + t:get("n")
    total_sent = total_sent + t:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"err_connect":%.0f,'
    .. '"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,"err_timeout":%.0f,'
    .. '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f,"max_us":%.0f,'
    .. '"mean_us":%.1f,"distinct":%.0f,"sent":%.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, distinct, total_sent))
end
