-- Delivery lines: activating the next delivery of a (subscriber, payment) line, creating
-- deliveries, waking parked ones. The lines' keys are derived (lib/keys.lua): the payment id of a
-- line is read from a delivery hash, and parked deliveries are popped from the waiting set.
-- lib: keys jobs

-- Makes the first pending delivery of (sub, pid) its head, unless it has one; returns the job
-- id of the head's job, due at ``at`` (default now), and the head's key; or false. A caller
-- that runs the head at once passes a later ``at``: the job is then its safety net.
local function activate_next(queue, sub, pid, now, at)
  local hkey = head_key(sub, pid)
  if redis.call('EXISTS', hkey) == 1 then return false end
  local nxt = redis.call('ZRANGE', order_key(sub, pid), 0, 0)[1]
  if not nxt then return false end
  redis.call('SET', hkey, nxt)
  local dkey = delivery_key(sub, nxt)
  redis.call('HSET', dkey, 'state', 'active', 'activated_ms', now)
  local gen = redis.call('HINCRBY', dkey, 'gen', 1)
  return enqueue(queue, sub, nxt, gen, at or now, now), dkey
end

-- Creates the delivery of transition ``tid`` to ``sub`` unless it exists, and activates it when
-- it is first in its (sub, pid) line. Returns the activated head's job id and key, or false.
local function insert_delivery(queue, sub, tid, pid, seq, etype, body, received, now, at)
  local dkey = delivery_key(sub, tid)
  if redis.call('EXISTS', dkey) == 1 then return false end
  redis.call('HSET', dkey, 'sub', sub, 'tid', tid, 'payment_id', pid, 'seq', seq,
    'type', etype, 'state', 'queued', 'gen', 0, 'attempts', 0, 'body', body,
    'received_ms', received, 'created_ms', now)
  redis.call('ZADD', order_key(sub, pid), seq, tid)
  return activate_next(queue, sub, pid, now, at)
end

-- Takes the longest-parked delivery of ``sub`` off its waiting set ``wkey`` and gives it a fresh
-- job, due at ``at`` (default now); returns the job id and the delivery's key, or false.
local function unpark_one(queue, wkey, sub, now, at)
  while true do
    local tid = redis.call('ZPOPMIN', wkey)[1]
    if not tid then return false end
    local dkey = delivery_key(sub, tid)
    if redis.call('HGET', dkey, 'state') == 'active' then
      local old = tonumber(redis.call('HGET', dkey, 'gen')) or 0
      cancel_job(queue, sub, tid, old)
      local gen = redis.call('HINCRBY', dkey, 'gen', 1)
      return enqueue(queue, sub, tid, gen, at or now, now), dkey
    end
  end
end

-- Gives up to ``count`` of the longest-parked deliveries of ``sub`` jobs due now; how many.
-- With ``fkey``, each woken job holds a slot of the in-flight zset until ``reserve_until`` (its
-- acquire renews it), so the wake-ups of the next finishes count it before it runs: a backlog
-- is released at the cap's rate, never more jobs due at once than free slots.
local function wake(queue, wkey, sub, count, now, fkey, reserve_until)
  local woken = 0
  while woken < count do
    local job = unpark_one(queue, wkey, sub, now)
    if not job then break end
    if fkey then redis.call('ZADD', fkey, reserve_until, job) end
    woken = woken + 1
  end
  return woken
end

-- Takes ``tid`` out of its line and activates the line's next delivery (see activate_next).
local function advance(queue, sub, pid, tid, now, at)
  redis.call('ZREM', order_key(sub, pid), tid)
  local hkey = head_key(sub, pid)
  if redis.call('GET', hkey) == tid then redis.call('DEL', hkey) end
  return activate_next(queue, sub, pid, now, at)
end
