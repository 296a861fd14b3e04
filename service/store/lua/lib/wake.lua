-- A subscriber's wake job (fanout_wake, lua/delivery_release.lua): the one job that brings its
-- parked deliveries back, instead of one job per parked delivery (docs/fanout.md "Isolation").
-- Deliveries parked behind an open breaker, or behind a probe in flight, or over the cap, have
-- no job of their own: they wait in the waiting set.
-- - One per breaker cycle: job id wake_job_id(sub, open_until), due when the cool-down ends
--   (plus the jitter of whoever enqueued it first). Whoever opens the breaker (delivery_finish)
--   or parks a delivery behind it (acquire) ensures it; the same id makes that one job.
-- - One recheck at a time for deliveries parked over the cap (a safety net: the finish of an
--   attempt wakes them as slots free): its due time is kept in the breaker hash (recheck_at);
--   a new one is enqueued only once that time has come.
-- lib: keys jobs
local FANOUT_WAKE = {{FANOUT_WAKE}}

-- Queues the wake job of ``sub`` for ``at``, due at ``score``, unless it is queued already; its
-- job id.
local function enqueue_wake(queue, sub, at, score, now)
  local job_id = wake_job_id(sub, string.format('%d', at))
  if redis.call('ZSCORE', queue, job_id) then return job_id end
  local ttl = score - now + EXPIRES_EXTRA
  if ttl < EXPIRES_EXTRA then ttl = EXPIRES_EXTRA end
  local args = '[' .. cjson.encode(sub) .. ']'
  redis.call('SET', arq_job_key(job_id), arq_job_body(FANOUT_WAKE, args, now), 'PX', ttl)
  redis.call('ZADD', queue, score, job_id)
  return job_id
end

-- The wake job of the breaker cycle that ends at ``open_until``, due then plus ``jitter`` ms.
local function ensure_cycle_wake(queue, sub, open_until, jitter, now)
  return enqueue_wake(queue, sub, open_until, open_until + (jitter or 0), now)
end

-- A recheck of the subscriber's parked deliveries ``after`` ms from now, unless one is due
-- later than now already (at most one per ``after`` ms). Returns its job id, or false.
local function ensure_recheck(queue, bkey, sub, now, after)
  if (tonumber(redis.call('HGET', bkey, 'recheck_at')) or 0) > now then return false end
  local at = now + after
  redis.call('HSET', bkey, 'recheck_at', at)
  return enqueue_wake(queue, sub, at, at, now)
end

-- Nothing is parked any more: the pending recheck, if any, is taken off the queue.
local function cancel_recheck(queue, bkey, sub)
  local at = redis.call('HGET', bkey, 'recheck_at')
  if not at then return end
  redis.call('HDEL', bkey, 'recheck_at')
  local job_id = wake_job_id(sub, at)
  redis.call('ZREM', queue, job_id)
  redis.call('DEL', arq_job_key(job_id))
end
