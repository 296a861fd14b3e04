-- Queues a delivery again, same webhook-id, at its place in its line (by seq): a dead letter
-- (replay), or a delivered or dropped one (resend). A delivered or dropped delivery has no hash
-- any more, only its record (lib/lines.lua ``shrink``): it is queued again from its record
-- (which leaves the payment's state hash until it finishes again) while its transition's
-- snapshot (the body) still exists, because another delivery of it is pending or dead. Its new
-- hash starts at generation ``now`` (ms): its job ids never repeat one of its earlier life's.
-- KEYS: 1 arq queue, 2 delivery, 3 dead letters (all), 4 dead letters of the subscriber
-- ARGV: 1 now ms, 2 subscriber id, 3 webhook-id, 4 the states it may be in (comma-separated,
--       e.g. 'dead' or 'dead,delivered,dropped'); for a finished delivery (no hash):
--       5 payment id ('' when unknown), 6 seq, 7 status of the transition
-- Reply: {result, job id}: result 'ok' (job id: the job of the line's head when this delivery
--        became it, else ''), 'missing', 'not_dead' (in no state of ARGV[4]) or 'no_body'
--        (its snapshot is gone); job id '' but for 'ok'
-- lib: keys jobs lines
local queue, dkey = KEYS[1], KEYS[2]
local now, sub, tid = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local FINISHED = {d = 'delivered', x = 'dropped'}

local function allowed(state)
  for name in string.gmatch(ARGV[4], '[^,]+') do
    if name == state then return true end
  end
  return false
end

local state = redis.call('HGET', dkey, 'state')
if not state then
  -- A finished delivery: its record, found by (payment id, seq).
  local pid, seq, status = ARGV[5] or '', ARGV[6] or '', ARGV[7] or ''
  if pid == '' then return {'missing', ''} end
  local rkey, field = records_key(pid), record_field(sub, seq)
  local record = redis.call('HGET', rkey, field)
  if not record then return {'missing', ''} end
  local parts = {}
  for part in string.gmatch(record .. ',', '([^,]*),') do parts[#parts + 1] = part end
  -- canceled and failed share a seq: the record names its status when it is one of them.
  local own = parts[8] or ''
  if (status == 'canceled' or status == 'failed') ~= (own == status) then
    return {'missing', ''}
  end
  if not allowed(FINISHED[parts[1]] or parts[1]) then return {'not_dead', ''} end
  if redis.call('EXISTS', snapshot_key(tid)) == 0 then return {'no_body', ''} end
  local created = (tonumber(redis.call('HGET', rkey, 't0')) or now) + (tonumber(parts[4]) or 0)
  redis.call('HSET', dkey, 'sub', sub, 'tid', tid, 'payment_id', pid, 'seq', seq,
    'type', 'payment.' .. status, 'state', 'queued', 'gen', now, 'attempts', 0,
    'received_ms', created, 'created_ms', created)
  redis.call('HINCRBY', snapshot_key(tid), 'refs', 1)
  redis.call('HDEL', rkey, field)
else
  if not allowed(state) then return {'not_dead', ''} end
  if redis.call('EXISTS', snapshot_key(tid)) == 0 then return {'no_body', ''} end
  if state == 'dead' then
    redis.call('ZREM', KEYS[3], dead_member(sub, tid))
    redis.call('ZREM', KEYS[4], tid)
  end
end
redis.call('HSET', dkey, 'state', 'queued', 'attempts', 0, 'replayed_ms', now)
redis.call('HINCRBY', dkey, 'replays', 1)
keep_pending(dkey, tid)
local pid = redis.call('HGET', dkey, 'payment_id')
local seq = tonumber(redis.call('HGET', dkey, 'seq'))
local okey = order_key(sub, pid)
redis.call('ZADD', okey, seq, tid)
redis.call('EXPIRE', okey, LINE_TTL)
local job = activate_next(queue, sub, pid, now)
if job and redis.call('GET', head_key(sub, pid)) == tid then return {'ok', job} end
return {'ok', ''}
