-- Delivery lines: activating the next delivery of a (subscriber, payment) line, creating
-- deliveries, waking parked ones, and shrinking a finished delivery to its record. The lines'
-- keys are derived (lib/keys.lua): the payment id of a line is read from a delivery hash, and
-- parked deliveries are popped from the waiting set.
-- lib: keys jobs
-- How long a pending line's keys live after their last write (layout.LINE_TTL_S).
local LINE_TTL = {{LINE_TTL_S}}

-- A pending delivery was written: its hash and its snapshot live LINE_TTL from now.
local function keep_pending(dkey, tid)
  redis.call('EXPIRE', dkey, LINE_TTL)
  redis.call('EXPIRE', snapshot_key(tid), LINE_TTL)
end

-- Makes the first pending delivery of (sub, pid) its head, unless it has one; returns the job
-- id of the head's job, due at ``at`` (default now), and the head's key; or false. A caller
-- that runs the head at once passes a later ``at``: the job is then its safety net.
local function activate_next(queue, sub, pid, now, at)
  local hkey = head_key(sub, pid)
  if redis.call('EXISTS', hkey) == 1 then return false end
  local nxt = redis.call('ZRANGE', order_key(sub, pid), 0, 0)[1]
  if not nxt then return false end
  redis.call('SET', hkey, nxt, 'EX', LINE_TTL)
  local dkey = delivery_key(sub, nxt)
  redis.call('HSET', dkey, 'state', 'active', 'activated_ms', now)
  keep_pending(dkey, nxt)
  local gen = redis.call('HINCRBY', dkey, 'gen', 1)
  return enqueue(queue, sub, nxt, gen, at or now, now), dkey
end

-- Creates the delivery of transition ``tid`` to ``sub`` unless it exists (pending, dead, or
-- already finished: its record), referring to the transition's snapshot, and activates it when
-- it is first in its (sub, pid) line. Returns the activated head's job id and key, or false.
local function insert_delivery(queue, sub, tid, pid, seq, etype, received, now, at)
  local dkey = delivery_key(sub, tid)
  if redis.call('EXISTS', dkey) == 1 then return false end
  if redis.call('HEXISTS', records_key(pid), record_field(sub, seq)) == 1 then return false end
  redis.call('HSET', dkey, 'sub', sub, 'tid', tid, 'payment_id', pid, 'seq', seq,
    'type', etype, 'state', 'queued', 'gen', 0, 'attempts', 0,
    'received_ms', received, 'created_ms', now)
  redis.call('EXPIRE', dkey, LINE_TTL)
  redis.call('HINCRBY', snapshot_key(tid), 'refs', 1)
  local okey = order_key(sub, pid)
  redis.call('ZADD', okey, seq, tid)
  redis.call('EXPIRE', okey, LINE_TTL)
  return activate_next(queue, sub, pid, now, at)
end

-- Drops one reference to the snapshot of ``tid``: the last one deletes it.
local function release_snapshot(tid)
  local skey = snapshot_key(tid)
  if redis.call('HINCRBY', skey, 'refs', -1) <= 0 then redis.call('DEL', skey) end
end

-- Replaces a finished delivery's hash by its record (service.store.records): one field
-- ``sub:seq`` of the payment's state hash (records_key), ``state,attempts,last status,created,last,done,
-- last error,status`` (state ``d`` delivered or ``x`` dropped; created is ms after the hash's
-- ``t0`` field, the time of the first record's creation; last and done are ms after created,
-- done empty when equal to last; status only for a final step other than the main line's,
-- canceled or failed, which share a seq; empty trailing parts left out; the whole cut to 64
-- bytes so a small hash stays a listpack), kept as long as the state (``ttl`` s when the state
-- is gone); and releases its snapshot.
local function shrink(dkey, state, now, ttl)
  local f = redis.call('HMGET', dkey, 'sub', 'tid', 'payment_id', 'seq', 'attempts',
    'last_status', 'created_ms', 'last_ms', 'last_error', 'type')
  local rkey = records_key(f[3])
  local created = tonumber(f[7]) or now
  redis.call('HSETNX', rkey, 't0', string.format('%d', created))
  local t0 = tonumber(redis.call('HGET', rkey, 't0'))
  local last = tonumber(f[8])
  local last_delta = last and string.format('%d', last - created) or ''
  local done_delta = string.format('%d', now - created)
  if done_delta == last_delta then done_delta = '' end
  local status = string.match(f[10] or '', '^payment%.(.*)$') or ''
  if status ~= 'canceled' and status ~= 'failed' then status = '' end
  local parts = {state, f[5] or '0', f[6] or '', string.format('%d', created - t0), last_delta,
    done_delta, (string.gsub(f[9] or '', ',', ';')), status}
  while parts[#parts] == '' do table.remove(parts) end
  local record = table.concat(parts, ',')
  if #record > 64 then
    -- Too long: the error is cut (the status, if any, kept).
    local keep = 64 - (#record - #parts[7])
    parts[7] = string.sub(parts[7], 1, math.max(0, keep))
    record = string.sub(table.concat(parts, ','), 1, 64)
  end
  redis.call('HSET', rkey, record_field(f[1], f[4]), record)
  -- The records live with the payment's state (its TTL); ``ttl`` when that was gone.
  if redis.call('TTL', rkey) < 0 then redis.call('EXPIRE', rkey, ttl) end
  redis.call('DEL', dkey)
  release_snapshot(f[2])
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
      keep_pending(dkey, tid)
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
