-- Marks a payment as needing a fetch, and takes its fetch lock unless another job holds it.
-- KEYS: 1 payment dirty, 2 payment lock
-- ARGV: 1 token, 2 lock ttl ms, 3 dirty ttl s
-- Reply: 1 taken (dirty cleared), 0 held by another job (dirty left set)
redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
