-- Records one processing run of a hint in its payment's history (service/store/history.py):
-- appends the run to the payment's packed timeline (a field of the timelines hash; a new one is
-- pushed on the payments list), keeps at most ``max runs`` runs per payment, drops the oldest
-- payments beyond the cap or first seen longer ago than the TTL (field and list entry together),
-- and counts the event in this minute's rate hash.
-- KEYS: 1 timelines hash, 2 payments list, 3 this minute's rate hash
-- ARGV: 1 payment id, 2 received ms, 3 fetched ms, 4 source, 5 fetched status code,
--       6 outcome code, 7 emitted status codes, 8 event id ('' for convergence), 9 now ms,
--       10 ttl ms, 11 payments cap, 12 runs cap, 13 count the event in the rate hash (1|0),
--       14 rate hash ttl s
-- A timeline is a header line (first received ms in base 36, SEP, its source), then one line per
-- run: received ms - first (signed base 36), SEP, fetched - received (base 36), SEP, source (''
-- when the header's), SEP, fetched status, SEP, outcome, SEP, emitted, SEP, event id.
-- Reply: 1 when the payment is new to history, else 0
local hkey, lkey = KEYS[1], KEYS[2]
local pid, received, at, source = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now, ttl = tonumber(ARGV[9]), tonumber(ARGV[10])
local cap, max_runs = tonumber(ARGV[11]), tonumber(ARGV[12])
local SEP = '\31'
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

local function b36(n)
  if n == 0 then return '0' end
  local sign = ''
  if n < 0 then sign, n = '-', -n end
  local out = ''
  while n > 0 do
    local r = n % 36
    out = string.sub(DIGITS, r + 1, r + 1) .. out
    n = (n - r) / 36
  end
  return sign .. out
end

local function first_of(value)
  local header = string.match(value, '^[^\n]*')
  local base, src = string.match(header, '^([0-9a-z]+)' .. SEP .. '(.*)$')
  return tonumber(base, 36) or 0, src or ''
end

local new = 0
local cur = redis.call('HGET', hkey, pid)
local base, default_source
if cur then
  base, default_source = first_of(cur)
else
  base, default_source = received, source
  cur = b36(base) .. SEP .. source
  redis.call('LPUSH', lkey, pid)
  new = 1
end
local run = table.concat({b36(received - base), b36(math.max(at - received, 0)),
  source == default_source and '' or source, ARGV[5], ARGV[6], ARGV[7], ARGV[8]}, SEP)
local value = cur .. '\n' .. run
local _, runs = string.gsub(value, '\n', '')
while runs > max_runs do
  local header_end = string.find(value, '\n', 1, true)
  local run_end = string.find(value, '\n', header_end + 1, true)
  value = string.sub(value, 1, header_end) .. string.sub(value, run_end + 1)
  runs = runs - 1
end
redis.call('HSET', hkey, pid, value)
-- The oldest payments go beyond the cap or the TTL (a bounded amount of work per run).
local dropped = 0
while dropped < 100 and redis.call('LLEN', lkey) > cap do
  redis.call('HDEL', hkey, redis.call('RPOP', lkey))
  dropped = dropped + 1
end
while dropped < 100 do
  local oldest = redis.call('LINDEX', lkey, -1)
  if not oldest then break end
  local kept = redis.call('HGET', hkey, oldest)
  if kept and first_of(kept) >= now - ttl then break end
  redis.call('RPOP', lkey)
  redis.call('HDEL', hkey, oldest)
  dropped = dropped + 1
end
if ARGV[13] == '1' then
  redis.call('HINCRBY', KEYS[3], source, 1)
  redis.call('EXPIRE', KEYS[3], ARGV[14])
end
return new
