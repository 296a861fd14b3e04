-- Records one processing run of a hint in its payment's history (service/store/history.py):
-- the run becomes one short field of the payment's state hash (the key every payment has at
-- rest: no key and no field name of its own for history), a payment new to history is pushed on
-- the payments list, at most ``runs cap`` runs are kept per payment, the oldest payments beyond
-- the cap or first seen longer ago than the TTL leave the list (and their history fields their
-- state hash), and the event is counted in this minute's rate hash.
-- KEYS: 1 the payment's state hash, 2 payments list, 3 this minute's rate hash
-- ARGV: 1 payment id, 2 received ms, 3 fetched ms, 4 source, 5 fetched status code,
--       6 outcome code, 7 emitted status codes, 8 event id (packed by history.py; '' for
--       convergence), 9 now ms, 10 ttl ms, 11 payments cap, 12 runs cap, 13 count the event in
--       the rate hash (1|0), 14 rate hash ttl s, 15 ttl s of a state hash that had none
-- Fields (HISTORY_HEADER, HISTORY_RUN): ``h`` the header: first received ms (base 36), SEP, its
-- source, SEP, the first kept run's number, SEP, the next run's number (base 36); ``r{n}`` run n
-- (base 36): received ms - first (signed base 36), SEP, fetched - received (base 36), SEP,
-- source ('' when the header's), SEP, fetched status, SEP, outcome, SEP, emitted, SEP, event id
-- (last: it may hold any byte).
-- Reply: 1 when the payment is new to history, else 0
-- lib: keys
local skey, lkey = KEYS[1], KEYS[2]
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

-- A header's parts: first received ms, source, first kept run, next run.
local function header_of(value)
  local base, src, first, nxt = string.match(value or '',
    '^([0-9a-z]+)' .. SEP .. '(.*)' .. SEP .. '([0-9a-z]+)' .. SEP .. '([0-9a-z]+)$')
  if not base then return nil end
  return tonumber(base, 36), src, tonumber(first, 36), tonumber(nxt, 36)
end

-- Removes a payment's history fields from its state hash (when it leaves the list).
local function forget(id)
  local key = payment_state_key(id)
  local _, _, first, nxt = header_of(redis.call('HGET', key, 'h'))
  if first then
    for n = first, nxt - 1 do redis.call('HDEL', key, 'r' .. b36(n)) end
  end
  redis.call('HDEL', key, 'h')
end

local new = 0
local base, default_source, first, nxt = header_of(redis.call('HGET', skey, 'h'))
if not base then
  base, default_source, first, nxt = received, source, 0, 0
  redis.call('LPUSH', lkey, pid)
  new = 1
end
redis.call('HSET', skey, 'r' .. b36(nxt), table.concat({b36(received - base),
  b36(math.max(at - received, 0)), source == default_source and '' or source, ARGV[5], ARGV[6],
  ARGV[7], ARGV[8]}, SEP))
nxt = nxt + 1
while nxt - first > max_runs do
  redis.call('HDEL', skey, 'r' .. b36(first))
  first = first + 1
end
redis.call('HSET', skey, 'h', table.concat({b36(base), default_source, b36(first), b36(nxt)}, SEP))
-- The state hash lives as its state does; one that had no TTL (no state yet) gets history's.
if redis.call('TTL', skey) < 0 then redis.call('EXPIRE', skey, ARGV[15]) end
-- The oldest payments go beyond the cap or the TTL (a bounded amount of work per run).
local dropped = 0
while dropped < 100 and redis.call('LLEN', lkey) > cap do
  forget(redis.call('RPOP', lkey))
  dropped = dropped + 1
end
while dropped < 100 do
  local oldest = redis.call('LINDEX', lkey, -1)
  if not oldest then break end
  local since = header_of(redis.call('HGET', payment_state_key(oldest), 'h'))
  if since and since >= now - ttl then break end
  redis.call('RPOP', lkey)
  forget(oldest)
  dropped = dropped + 1
end
if ARGV[13] == '1' then
  redis.call('HINCRBY', KEYS[3], source, 1)
  redis.call('EXPIRE', KEYS[3], ARGV[14])
end
return new
