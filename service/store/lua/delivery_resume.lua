-- After a crash: the deferred safety-net jobs of the attempts in flight of some subscribers are
-- made due when their slot's lease ends (at once when it has lapsed). An attempt sent at once
-- (by processing, or chained by a delivery job) holds its slot on a short lease that its worker
-- renews, while its own job waits the longer hold; when that worker dies, the job of the run
-- that was sending (re-run by arq once its in-progress lease lapsed) calls this, so the
-- attempt's job runs within a lease, not after the hold. A live holder's heartbeat
-- (lease_renew.lua) keeps pushing such a job back with its slot, so it never runs beside it.
-- KEYS: 1 arq queue, then the in-flight zset of each subscriber
-- ARGV: 1 now ms
-- Reply: how many jobs were made due earlier
-- O(slots): the members of the given in-flight zsets (at most the cap each, plus lapsed ones).
local queue, now = KEYS[1], tonumber(ARGV[1])
local moved = 0
for i = 2, #KEYS do
  local slots = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  for j = 1, #slots, 2 do
    local job_id, ends = slots[j], tonumber(slots[j + 1])
    local at = ends > now and ends or now
    local due = tonumber(redis.call('ZSCORE', queue, job_id))
    if due and due > at then
      redis.call('ZADD', queue, 'XX', at, job_id)
      moved = moved + 1
    end
  end
end
return moved
