-- A subscriber's wake job (fanout_wake, lib/wake.lua): brings its parked deliveries back.
-- - Breaker open (the job ran before the cool-down ended, or a recheck while open): nothing;
--   the cycle's wake job is ensured (it is this one, or queued already).
-- - Half-open with a live probe in flight: nothing; the probe's finish re-opens the breaker
--   (and enqueues the next cycle's wake job) or closes it and releases the waiting deliveries,
--   and the probe's own job is its safety net should its sender die.
-- - Half-open with no live probe (none yet, or its lease lapsed: its sender died): the
--   longest-parked delivery goes as the probe, acquired for the caller to send at once (its
--   slot and the probe held for a lease; its fresh job deferred by the hold, as the safety net).
--   Nothing parked: nothing to do (the next delivery to come becomes the probe in acquire).
-- - Closed: the longest-parked deliveries get jobs due now, as many as there are free slots
--   (lapsed ones freed first; each holds its slot for a lease until it runs); a recheck is ensured while some stay parked, and a pending one
--   cancelled when none do.
-- KEYS: 1 arq queue, 2 subscribers version, 3 waiting, 4 in-flight, 5 breaker
-- ARGV: 1 now ms, 2 subscriber id, 3 enabled (1|0), 4 cap, 5 lease ms, 6 hold ms,
--       7 recheck ms, 8 open jitter ms, 9 subscribers version
-- Reply: {verdict, n[, probe job id, body, attempts, payment id, type, received ms]}:
--        'reload' (stale subscribers version, nothing written), 'disabled', 'open' (n: open
--        until), 'probing' (n: the probe's lease end), 'idle', 'probe' (with the delivery to
--        send), 'released' (n: how many were given a job).
-- lib: keys jobs lines acquire wake
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[9] then return {'reload', 0} end
local queue, wkey, fkey, bkey = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local now, sub, enabled = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1'
local cap, lease, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local recheck, jitter = tonumber(ARGV[7]), tonumber(ARGV[8])
-- Disabled: its parked deliveries wait for an enable (which wakes them), with no job.
if not enabled then return {'disabled', 0} end
redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now)
local b = redis.call('HMGET', bkey, 'open_until', 'probe', 'probe_until')
local open_until = tonumber(b[1]) or 0
if open_until > now then
  ensure_cycle_wake(queue, sub, open_until, jitter, now)
  return {'open', open_until}
end
if open_until > 0 then
  local probe, probe_until = b[2] or '', tonumber(b[3]) or 0
  if probe ~= '' and probe_until > now then return {'probing', probe_until} end
  local job, dkey = unpark_one(queue, wkey, sub, now, now + hold)
  if not job then return {'idle', 0} end
  redis.call('HSET', bkey, 'probe', job, 'probe_until', now + lease)
  redis.call('ZADD', fkey, now + lease, job)
  return {'probe', 0, job, unpack(delivery_fields(dkey))}
end
local woken = wake(queue, wkey, sub, cap - redis.call('ZCARD', fkey), now, fkey, now + lease)
if redis.call('ZCARD', wkey) > 0 then
  ensure_recheck(queue, bkey, sub, now, recheck)
else
  cancel_recheck(queue, bkey, sub)
end
return {'released', woken}
