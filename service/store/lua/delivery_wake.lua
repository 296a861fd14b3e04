-- Resets a subscriber's breaker and starts up to ``count`` of its parked deliveries.
-- KEYS: 1 arq queue, 2 breaker, 3 waiting
-- ARGV: 1 now ms, 2 subscriber id, 3 count
-- Reply: how many were woken
-- lib: keys jobs lines
redis.call('DEL', KEYS[2])
return wake(KEYS[1], KEYS[3], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[1]))
