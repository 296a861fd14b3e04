-- Stores a verified webhook: dedupe marker, arq job, queue entry and raw archive, atomically.
-- KEYS: 1 dedupe, 2 arq job, 3 arq queue, 4 raw archive
-- ARGV: 1 job id, 2 dedupe ttl s, 3 job bytes, 4 job ttl ms, 5 enqueue ms, 6 raw record,
--       7 raw ttl s
-- Reply: 1 stored, 0 duplicate (nothing written)
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[7])
return 1
