-- Convergence's due checks: takes up to ``batch`` payments whose next check is due, moves each
-- to its next step's time and queues its check (a process_event job, lib/converge.lua). A
-- member whose state hash is gone (expired) is dropped. O(log n) per payment taken: no scan.
-- KEYS: 1 converge zset, 2 arq queue
-- ARGV: 1 batch, 2 plan (ConvergePlan.encode)
-- Reply: the payment ids whose check was queued.
-- The payments' state keys and the jobs' keys are derived (lib/keys.lua): the ids come from
-- the zset (docs/decisions/lua-keys.md).
-- lib: keys jobs converge
local plan = converge_plan(ARGV[2])
local now = converge_now()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local queued = {}
for _, pid in ipairs(due) do
  local skey = payment_state_key(pid)
  local first = tonumber(redis.call('HGET', skey, 'cv_first'))
  if not first then
    redis.call('ZREM', KEYS[1], pid)
  else
    local step = (tonumber(redis.call('HGET', skey, 'cv_step')) or 0) + 1
    redis.call('HSET', skey, 'cv_step', step)
    redis.call('ZADD', KEYS[1], (converge_next(plan, first, step, now)), pid)
    converge_enqueue(KEYS[2], pid, first, step, now)
    table.insert(queued, pid)
  end
end
return queued
