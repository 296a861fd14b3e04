-- wrk script for bench/ingest.py: replays pre-signed, distinct webhook requests.
-- Usage: wrk -t<n> -s bench/ingest.lua <url> -- <requests file> <path> <n>
-- The file holds one request per line: "<webhook-id>\t<timestamp>\t<signature>\t<json body>".
-- Each wrk thread takes every n-th line, so no two connections send the same event.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  local path = args[2] or "/v1/webhooks/kartapay"
  local nthreads = tonumber(args[3] or "1")
  requests = {}
  wrapped = 0
  local index = 0
  for line in io.lines(file) do
    if index % nthreads == id then
      local msg_id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = msg_id,
        ["webhook-timestamp"] = ts,
        ["webhook-signature"] = sig,
      }
      requests[#requests + 1] = wrk.format("POST", path, headers, body)
    end
    index = index + 1
  end
  position = 0
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
