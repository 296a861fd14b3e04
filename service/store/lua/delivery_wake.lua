-- Resets a subscriber's breaker and starts up to ``count`` of its parked deliveries (admin
-- enable, remove). The pending wake job of an open breaker's cycle goes with the breaker; a
-- pending recheck stays while deliveries remain parked (else it goes too).
-- KEYS: 1 arq queue, 2 breaker, 3 waiting
-- ARGV: 1 now ms, 2 subscriber id, 3 count
-- Reply: how many were woken
-- lib: keys jobs lines wake
local queue, bkey, wkey, now, sub = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2]
local b = redis.call('HMGET', bkey, 'open_until', 'recheck_at')
local open_until = tonumber(b[1]) or 0
if open_until > now then
  cancel_job_id(queue, wake_job_id(sub, string.format('%d', open_until)))
end
redis.call('DEL', bkey)
local woken = wake(queue, wkey, sub, tonumber(ARGV[3]), now)
if b[2] then
  redis.call('HSET', bkey, 'recheck_at', b[2])
  if redis.call('ZCARD', wkey) == 0 then cancel_recheck(queue, bkey, sub) end
end
return woken
