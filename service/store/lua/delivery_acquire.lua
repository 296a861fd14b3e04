-- Lets a delivery job's attempt start, or parks the delivery (see lib/acquire.lua).
-- KEYS: 1 arq queue, 2 subscribers version, 3 delivery, 4 waiting, 5 in-flight, 6 breaker
-- ARGV: 1 now ms, 2 subscriber id, 3 webhook-id, 4 gen, 5 job id, 6 enabled (1|0), 7 cap,
--       8 lease ms, 9 open jitter ms (for the breaker cycle's wake job), 10 subscribers version,
--       11 recheck ms (over the cap: the subscriber's recheck wake job is due then, unless one
--       is pending; 0: after the lease)
-- Reply: {'reload', 0} when the caller's subscribers version is stale; else try_acquire's
--        {verdict, until_ms[, body, attempts, payment id, type, received ms]}
-- lib: keys jobs acquire
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[10] then return {'reload', 0} end
local k = {delivery = KEYS[3], waiting = KEYS[4], inflight = KEYS[5], breaker = KEYS[6]}
return try_acquire(KEYS[1], k, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1',
  tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[1]),
  tonumber(ARGV[11]) > 0 and tonumber(ARGV[11]) or nil)
