-- Keeps an authentic event that names no payment on a capped list.
-- KEYS: 1 unroutable list
-- ARGV: 1 raw record, 2 cap
-- Reply: 1
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
