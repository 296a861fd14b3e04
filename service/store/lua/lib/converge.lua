-- Convergence: the schedule of fetches of a non-terminal payment (docs/processing.md
-- "Convergence"), shared by payment_record.lua (start, push back, stop, stuck) and
-- converge_due.lua (the due checks). The payment's state hash holds ``cv_first`` (ms of its
-- first non-terminal record: the horizon counts from it) and ``cv_step`` (checks done).
-- lib: keys jobs
local FINAL_STATUSES = {{FINAL_STATUSES}}
local PROCESS_EVENT = {{PROCESS_EVENT}}
local CONVERGENCE_SOURCE = {{CONVERGENCE_SOURCE}}

-- The plan, as service.store.converge.ConvergePlan.encode writes it:
-- "horizon ms,repeat ms,stuck cap,delay 0 ms,delay 1 ms,..."; nil when empty (convergence off).
local function converge_plan(text)
  if text == nil or text == '' then return nil end
  local v = {}
  for n in string.gmatch(text, '[^,]+') do table.insert(v, tonumber(n)) end
  local delays = {}
  for k = 4, #v do table.insert(delays, v[k]) end
  return {horizon = v[1], every = v[2], stuck_max = v[3], delays = delays}
end

local function converge_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When the check after ``step`` checks is due, and whether the horizon has passed (then: a
-- safety net one repeat delay away). Never later than the horizon, so the last check is there.
local function converge_next(plan, first, step, now)
  local deadline = first + plan.horizon
  if now >= deadline then return now + plan.every, true end
  local at = now + (plan.delays[step + 1] or plan.every)
  if at > deadline then at = deadline end
  return at, false
end

-- After a record of payment ``pid`` (``newer``: a newer state was just recorded). A final
-- state ends its schedule (and takes it off the stuck list); a first non-terminal state, or
-- a newer one of a stuck payment, starts it; any other record pushes the next check back
-- (never forward); a record past the horizon moves it to the stuck list. Returns 1 when
-- the payment was found stuck now, else 0.
local function converge_after_record(skey, ckey, stuck_key, pid, newer, plan)
  if not plan then return 0 end
  local now = converge_now()
  local state = redis.call('HMGET', skey, 'status', 'cv_first', 'cv_step')
  if FINAL_STATUSES[state[1]] then
    redis.call('ZREM', ckey, pid)
    redis.call('ZREM', stuck_key, pid)
    redis.call('HDEL', skey, 'cv_first', 'cv_step')
    return 0
  end
  local first = tonumber(state[2])
  local stuck = redis.call('ZSCORE', stuck_key, pid)
  if (not first) or (stuck and newer) then
    redis.call('ZREM', stuck_key, pid)
    redis.call('HSET', skey, 'cv_first', now, 'cv_step', 0)
    redis.call('ZADD', ckey, (converge_next(plan, now, 0, now)), pid)
    return 0
  end
  if stuck then return 0 end
  local step = tonumber(state[3]) or 0
  local at, past = converge_next(plan, first, step, now)
  if past then
    redis.call('ZREM', ckey, pid)
    redis.call('ZADD', stuck_key, now, pid)
    local over = redis.call('ZCARD', stuck_key) - plan.stuck_max
    if over > 0 then redis.call('ZPOPMIN', stuck_key, over) end
    return 1
  end
  redis.call('ZADD', ckey, 'GT', at, pid)
  return 0
end

-- Queues the convergence check number ``step`` of ``pid``: a process_event job in arq's format,
-- its hint from source CONVERGENCE_SOURCE; its job id.
local function converge_enqueue(queue, pid, first, step, now)
  local job_id = converge_job_id(pid, first, step)
  local args = '[{"source":' .. cjson.encode(CONVERGENCE_SOURCE) .. ',"event_id":'
    .. cjson.encode(job_id) .. ',"payment_id":' .. cjson.encode(pid)
    .. ',"received_at_ms":' .. string.format('%d', now) .. ',"attempt":0}]'
  redis.call('SET', arq_job_key(job_id), arq_job_body(PROCESS_EVENT, args, now), 'PX',
    EXPIRES_EXTRA)
  redis.call('ZADD', queue, now, job_id)
  return job_id
end
