-- Stores a verified webhook: its field in its payment's event hash (dedupe marker and
-- compressed raw record in one value), arq job and queue entry, atomically.
-- KEYS: 1 the payment's event hash, 2 arq job, 3 arq queue
-- ARGV: 1 job id, 2 event ttl s, 3 job bytes, 4 job ttl ms, 5 enqueue ms, 6 raw record
--       (compressed), 7 the event's field
-- Reply: 1 stored, 0 duplicate (nothing written)
if redis.call('HSETNX', KEYS[1], ARGV[7], ARGV[6]) == 0 then
  return 0
end
-- Each new event of the payment pushes the hash's expiry back: an event is remembered at least
-- the TTL after it, and the TTL after the payment's latest new event.
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
