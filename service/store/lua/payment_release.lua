-- Gives a payment's fetch lock up after a failed fetch; the payment stays marked dirty.
-- KEYS: 1 payment dirty, 2 payment lock
-- ARGV: 1 token, 2 dirty ttl s
-- Reply: 1
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
