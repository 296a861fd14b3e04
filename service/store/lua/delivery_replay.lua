-- Queues a delivery again, same webhook-id, at its place in its line (by seq): a dead letter
-- (replay), or a delivered or dropped one (resend). A done delivery loses its done TTL: it is
-- pending again, and pending deliveries never expire.
-- KEYS: 1 arq queue, 2 delivery, 3 dead letters (all), 4 dead letters of the subscriber
-- ARGV: 1 now ms, 2 subscriber id, 3 webhook-id, 4 the states it may be in (comma-separated,
--       e.g. 'dead' or 'dead,delivered,dropped')
-- Reply: {result, job id}: result 'ok' (job id: the job of the line's head when this delivery
--        became it, else ''), 'missing', 'not_dead' (in no state of ARGV[4]) or 'no_body'
--        (its body is past retention); job id '' but for 'ok'
-- lib: keys jobs lines
local queue, dkey = KEYS[1], KEYS[2]
local now, sub, tid = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local state = redis.call('HGET', dkey, 'state')
if not state then return {'missing', ''} end
local allowed = false
for name in string.gmatch(ARGV[4], '[^,]+') do
  if name == state then allowed = true end
end
if not allowed then return {'not_dead', ''} end
if redis.call('HEXISTS', dkey, 'body') == 0 then return {'no_body', ''} end
if state == 'dead' then
  redis.call('ZREM', KEYS[3], dead_member(sub, tid))
  redis.call('ZREM', KEYS[4], tid)
else
  redis.call('PERSIST', dkey)
end
redis.call('HSET', dkey, 'state', 'queued', 'attempts', 0, 'replayed_ms', now)
redis.call('HINCRBY', dkey, 'replays', 1)
local pid = redis.call('HGET', dkey, 'payment_id')
local seq = tonumber(redis.call('HGET', dkey, 'seq'))
redis.call('ZADD', order_key(sub, pid), seq, tid)
local job = activate_next(queue, sub, pid, now)
if job and redis.call('GET', head_key(sub, pid)) == tid then return {'ok', job} end
return {'ok', ''}
