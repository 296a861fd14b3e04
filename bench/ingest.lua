-- wrk script for bench/ingest.py (kartapay and each source): replays pre-built, distinct requests.
-- Usage: wrk -t<n> -s bench/ingest.lua <url> -- <requests file> <n> [<mean delay ms>]
-- The file holds one request per line: "<method>\t<path>\t<headers>\t<body>", the headers as
-- "name: value" pairs separated by the byte 0x1f. Each wrk thread takes every n-th line, so no
-- two connections send the same event.
-- With a mean delay, each connection waits a random time (exponential, that mean, in whole ms)
-- after each answer before its next request: a paced load of about connections / delay
-- requests per second, for latency below saturation. Without one, no delay() is defined and
-- wrk sends as fast as it is answered.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  local nthreads = tonumber(args[2] or "1")
  requests = {}
  wrapped = 0
  local index = 0
  for line in io.lines(file) do
    if index % nthreads == id then
      local method, path, raw_headers, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      for pair in raw_headers:gmatch("[^\31]+") do
        local name, value = pair:match("^([^:]+): (.*)$")
        headers[name] = value
      end
      requests[#requests + 1] = wrk.format(method, path, headers, body)
    end
    index = index + 1
  end
  position = 0
  local mean_delay = tonumber(args[3] or "0")
  if mean_delay > 0 then
    math.randomseed(os.time() + id)
    delay = function()
      -- Exponential with mean mean_delay, rounded to whole ms at random (mean kept).
      return math.floor(-math.log(1 - math.random()) * mean_delay + math.random())
    end
  end
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
    wrapped = wrapped + 1
  end
  return requests[position]
end

function done(summary, latency, _)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  io.write(string.format(
    'JSON{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    wraps))
end
