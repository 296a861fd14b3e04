-- Stores a verified webhook: its event key (dedupe marker and compressed raw record in one
-- value), arq job and queue entry, atomically.
-- KEYS: 1 event key, 2 arq job, 3 arq queue
-- ARGV: 1 job id, 2 event ttl s, 3 job bytes, 4 job ttl ms, 5 enqueue ms, 6 raw record
--       (compressed)
-- Reply: 1 stored, 0 duplicate (nothing written)
if not redis.call('SET', KEYS[1], ARGV[6], 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
