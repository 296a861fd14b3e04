-- Writing and cancelling delivery jobs in arq's own format (service/store/jobs.py).
-- lib: keys
local EXPIRES_EXTRA = {{ARQ_EXPIRES_EXTRA_MS}}
local FANOUT_DELIVER = {{FANOUT_DELIVER}}
{{ARQ_JOB_BODY}}
-- Queues the delivery job of generation ``gen`` of (sub, tid), due at ``score``; its job id.
local function enqueue(queue, sub, tid, gen, score, now)
  local job_id = deliver_job_id(sub, tid, gen)
  local args = '[' .. cjson.encode(sub) .. ',' .. cjson.encode(tid) .. ']'
  local ttl = score - now + EXPIRES_EXTRA
  if ttl < EXPIRES_EXTRA then ttl = EXPIRES_EXTRA end
  redis.call('SET', arq_job_key(job_id), arq_job_body(FANOUT_DELIVER, args, now), 'PX', ttl)
  redis.call('ZADD', queue, score, job_id)
  return job_id
end

-- Removes a queued job, by id.
local function cancel_job_id(queue, job_id)
  redis.call('ZREM', queue, job_id)
  redis.call('DEL', arq_job_key(job_id))
end

local function cancel_job(queue, sub, tid, gen)
  cancel_job_id(queue, deliver_job_id(sub, tid, gen))
end
