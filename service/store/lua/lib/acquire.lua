-- Letting a delivery attempt start, shared by delivery_acquire.lua and payment_record.lua (which
-- starts the heads it creates).
-- lib: keys jobs wake

-- What an attempt needs of a delivery, read when it starts (Acquired.started): the body is its
-- transition's snapshot (compressed; the worker decompresses it), '' when it is gone.
local function delivery_fields(dkey)
  local f = redis.call('HMGET', dkey, 'tid', 'attempts', 'payment_id', 'type', 'received_ms')
  f[1] = (f[1] and redis.call('HGET', snapshot_key(f[1]), 'z')) or ''
  return f
end

-- The keys try_acquire works on for (sub, tid), derived (for a caller that did not pass them).
local function acquire_keys(sub, tid)
  return {delivery = delivery_key(sub, tid), waiting = waiting_key(sub),
    inflight = inflight_key(sub), breaker = breaker_key(sub)}
end

-- Lets the attempt of job ``job_id`` on delivery (sub, tid, gen) start, or parks the delivery in
-- the subscriber's waiting set, with no job of its own (over the cap, breaker open, probe in
-- flight, subscriber disabled); what brings it back is the subscriber's one wake job
-- (lib/wake.lua): the breaker cycle's, or a recheck; the finish of an attempt; or an enable.
-- ``k``: the keys, as acquire_keys names them. Returns
-- {verdict, until_ms[, body, attempts, payment id, type, received ms]}.
-- ``lease``: how long a started attempt holds its slot (or probe) unless its worker renews it.
-- ``open_jitter``: added to the end of the cool-down for the cycle's wake job (when this park
-- enqueues it). ``recheck`` (default: the lease): when the subscriber's parked deliveries are
-- rechecked after one parks over the cap, should nothing wake them sooner (the finish of an
-- attempt wakes parked ones, lapsed slots included).
local function try_acquire(queue, k, sub, tid, gen, job_id, enabled, cap, lease, open_jitter,
    now, recheck)
  local dkey, fkey, bkey = k.delivery, k.inflight, k.breaker
  if redis.call('HGET', dkey, 'state') ~= 'active' or redis.call('HGET', dkey, 'gen') ~= gen then
    return {'stale', 0}
  end
  -- Parked: the gen moves on (this job is spent), the delivery waits in line for a wake-up.
  local function park()
    redis.call('HINCRBY', dkey, 'gen', 1)
    redis.call('ZADD', k.waiting, 'NX', now, tid)
  end
  local function start()
    redis.call('ZADD', fkey, now + lease, job_id)
    return unpack(delivery_fields(dkey))
  end
  if not enabled then park() return {'disabled', 0} end
  redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now)
  if redis.call('ZSCORE', fkey, job_id) then return {'ok', 0, start()} end
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if open_until > now then
    park()
    ensure_cycle_wake(queue, sub, open_until, open_jitter, now)
    return {'open', open_until}
  end
  if open_until > 0 then
    local probe = redis.call('HGET', bkey, 'probe')
    local probe_until = tonumber(redis.call('HGET', bkey, 'probe_until')) or 0
    if probe and probe ~= '' and probe ~= job_id and probe_until > now then
      -- The probe's finish re-opens the breaker (with the next cycle's wake job) or closes it
      -- and releases the waiting deliveries; its own job is the safety net should it die.
      park()
      return {'probing', probe_until}
    end
    redis.call('HSET', bkey, 'probe', job_id, 'probe_until', now + lease)
    return {'probe', 0, start()}
  end
  if redis.call('ZCARD', fkey) >= cap then
    park()
    ensure_recheck(queue, bkey, sub, now, recheck or lease)
    return {'cap', 0}
  end
  return {'ok', 0, start()}
end
