-- Records a delivery attempt and moves the delivery on: delivered, retried later (a fresh job),
-- dead-lettered, dropped, or parked (410); then wakes parked deliveries of the subscriber.
-- A failure that opens the breaker (the threshold reached, or a failed probe) enqueues that
-- cycle's one wake job (lib/wake.lua), due when the cool-down ends.
-- KEYS: 1 arq queue, 2 subscribers version, 3 delivery, 4 in-flight, 5 breaker, 6 attempt log,
--       7 waiting, 8 dead letters (all), 9 dead letters of the subscriber, 10 arq job of job id
-- ARGV: 1 now ms, 2 subscriber id, 3 webhook-id, 4 gen, 5 job id, 6 outcome
--       (ok|fail|gone|removed), 7 next (retry|dead), 8 retry at ms, 9 breaker threshold,
--       10 cooldown ms, 11 cap, 12 enabled (1|0), 13 done ttl s, 14 log entry ('' for none),
--       15 log cap, 16 status, 17 error, 18 hold ms, 19 lease ms, 20 subscribers version,
--       21 open jitter ms (for a wake job this finish enqueues), 22 recheck ms (0: none),
--       23 operator ttl s (a dead letter's hash and snapshot; dead letters older are trimmed
--       from the indexes)
-- A delivered or dropped delivery shrinks to its record (lib/lines.lua ``shrink``, kept done
-- ttl s) and releases its snapshot.
-- With hold ms > 0, the next delivery of the line that a success activates is acquired for the
-- caller in the same step (when the caller's subscriber list is current and the cap allows) and
-- handed back to run at once: its job stays queued, deferred by hold ms, as the safety net should
-- the caller die. With no next one in the line, the longest-parked delivery of the subscriber
-- (waiting for a slot) is handed over the same way, instead of being woken into a job.
-- Slots whose lease lapsed are dropped first, so a dead worker's slots wake parked deliveries.
-- Wake-ups are bounded by the free slots (at most the cap), each woken job holding its slot for
-- a lease until it runs; when deliveries stay parked, a recheck wake job (ARGV 22 ms away) is
-- ensured as their safety net.
-- Reply: {result, woken, dead letters, handed job id[, its body, attempts, payment id, type,
--        received ms]}
-- The line's keys are derived (lib/lines.lua): its payment id is read from the delivery.
-- lib: keys jobs lines acquire wake
local queue, dkey, fkey, bkey = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local lkey, wkey, dead_all, dead_sub = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now = tonumber(ARGV[1])
local sub, tid, gen, job_id = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local outcome, nxt, retry_at = ARGV[6], ARGV[7], tonumber(ARGV[8])
local threshold, cooldown, cap = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local enabled, done_ttl = ARGV[12] == '1', tonumber(ARGV[13])
local log_entry, log_cap, status, err = ARGV[14], tonumber(ARGV[15]), ARGV[16], ARGV[17]
local hold, lease = tonumber(ARGV[18]), tonumber(ARGV[19])
local jitter, recheck = tonumber(ARGV[21]) or 0, tonumber(ARGV[22]) or 0
local operator_ttl = tonumber(ARGV[23])
local handed, handed_fields = '', {}
-- The caller's copy of the subscriber is current: it may be handed more work.
local current = enabled and (redis.call('GET', KEYS[2]) or '0') == ARGV[20]
redis.call('ZREM', fkey, job_id)
-- Slots whose lease lapsed (their holder died) are free again: they count for the wake below.
redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now)
-- This attempt is over: its job (an arq run, or the safety job of an inline run) is spent.
redis.call('ZREM', queue, job_id)
redis.call('DEL', KEYS[10])
if log_entry ~= '' then
  redis.call('LPUSH', lkey, log_entry)
  redis.call('LTRIM', lkey, 0, log_cap - 1)
end
local breaker_open = false
if outcome == 'ok' then
  -- Closed before the cool-down ended (an attempt begun before it opened): its wake job goes.
  local was_open = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if was_open > now then cancel_job_id(queue, wake_job_id(sub, string.format('%d', was_open))) end
  redis.call('HSET', bkey, 'fails', 0, 'open_until', 0, 'probe', '')
elseif outcome == 'fail' then
  local fails = redis.call('HINCRBY', bkey, 'fails', 1)
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if redis.call('HGET', bkey, 'probe') == job_id then
    -- The probe failed: the next cycle, with its one wake job.
    redis.call('HSET', bkey, 'open_until', now + cooldown, 'probe', '')
    ensure_cycle_wake(queue, sub, now + cooldown, jitter, now)
    breaker_open = true
  elseif open_until > 0 then
    breaker_open = true
  elseif fails >= threshold then
    redis.call('HSET', bkey, 'open_until', now + cooldown)
    ensure_cycle_wake(queue, sub, now + cooldown, jitter, now)
    breaker_open = true
  end
end
local result = 'stale'
local state = redis.call('HGET', dkey, 'state')
if state == 'active' and redis.call('HGET', dkey, 'gen') == gen then
  local pid = redis.call('HGET', dkey, 'payment_id')
  if outcome ~= 'removed' then
    redis.call('HINCRBY', dkey, 'attempts', 1)
    redis.call('HSET', dkey, 'last_status', status, 'last_error', err, 'last_ms', now)
  end
  if outcome == 'ok' then
    shrink(dkey, 'd', now, done_ttl)
    -- The caller takes the line's next delivery when it may: its job then waits the hold.
    local take = hold > 0 and current and redis.call('ZCARD', fkey) < cap
    local nxt_job, nxt_dkey = advance(queue, sub, pid, tid, now, take and now + hold or now)
    if take and nxt_job then
      redis.call('ZADD', fkey, now + lease, nxt_job)
      handed = nxt_job
      handed_fields = delivery_fields(nxt_dkey)
    end
    result = 'delivered'
  elseif outcome == 'removed' then
    shrink(dkey, 'x', now, done_ttl)
    advance(queue, sub, pid, tid, now)
    result = 'dropped'
  elseif outcome == 'gone' then
    redis.call('HINCRBY', dkey, 'gen', 1)
    keep_pending(dkey, tid)
    redis.call('ZADD', wkey, 'NX', now, tid)
    result = 'parked'
  elseif nxt == 'retry' then
    local g = redis.call('HINCRBY', dkey, 'gen', 1)
    keep_pending(dkey, tid)
    enqueue(queue, sub, tid, g, retry_at, now)
    result = 'retry'
  else
    redis.call('HSET', dkey, 'state', 'dead', 'dead_ms', now)
    redis.call('EXPIRE', dkey, operator_ttl)
    redis.call('EXPIRE', snapshot_key(tid), operator_ttl)
    redis.call('ZADD', dead_all, now, dead_member(sub, tid))
    redis.call('ZADD', dead_sub, now, tid)
    -- Dead letters past the operator ttl have expired: their index entries go too.
    redis.call('ZREMRANGEBYSCORE', dead_all, '-inf', now - operator_ttl * 1000)
    redis.call('ZREMRANGEBYSCORE', dead_sub, '-inf', now - operator_ttl * 1000)
    advance(queue, sub, pid, tid, now)
    result = 'dead'
  end
end
local woken = 0
if (enabled or outcome == 'removed') and not breaker_open and outcome ~= 'gone' then
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if open_until == 0 then
    local free = cap - redis.call('ZCARD', fkey)
    if outcome == 'removed' then free = 1 end
    if free > 0 and handed == '' and hold > 0 and outcome == 'ok' and current then
      -- Nothing next in this line: the caller takes the slot with a parked delivery instead.
      local job, parked_dkey = unpark_one(queue, wkey, sub, now, now + hold)
      if job then
        redis.call('ZADD', fkey, now + lease, job)
        handed = job
        handed_fields = delivery_fields(parked_dkey)
        free = free - 1
        woken = 1
      end
    end
    if free > 0 then
      local reserve = (outcome ~= 'removed' and lease > 0) and fkey or nil
      woken = woken + wake(queue, wkey, sub, free, now, reserve, now + lease)
    end
    if redis.call('ZCARD', wkey) == 0 then
      cancel_recheck(queue, bkey, sub)
    elseif enabled and recheck > 0 then
      ensure_recheck(queue, bkey, sub, now, recheck)
    end
  end
end
return {result, woken, redis.call('ZCARD', dead_all), handed, unpack(handed_fields)}
