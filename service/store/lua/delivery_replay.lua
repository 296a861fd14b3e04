-- Queues a dead-lettered delivery again, same webhook-id, at the end of its line.
-- KEYS: 1 arq queue, 2 delivery, 3 dead letters (all), 4 dead letters of the subscriber
-- ARGV: 1 now ms, 2 subscriber id, 3 webhook-id
-- Reply: 'ok', 'missing' or 'not_dead'
-- lib: keys jobs lines
local queue, dkey = KEYS[1], KEYS[2]
local now, sub, tid = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local state = redis.call('HGET', dkey, 'state')
if not state then return 'missing' end
if state ~= 'dead' then return 'not_dead' end
redis.call('ZREM', KEYS[3], dead_member(sub, tid))
redis.call('ZREM', KEYS[4], tid)
redis.call('HSET', dkey, 'state', 'queued', 'attempts', 0, 'replayed_ms', now)
redis.call('HINCRBY', dkey, 'replays', 1)
keep_pending(dkey, tid)
local pid = redis.call('HGET', dkey, 'payment_id')
local seq = tonumber(redis.call('HGET', dkey, 'seq'))
local okey = order_key(sub, pid)
redis.call('ZADD', okey, seq, tid)
redis.call('EXPIRE', okey, LINE_TTL)
activate_next(queue, sub, pid, now)
return 'ok'
