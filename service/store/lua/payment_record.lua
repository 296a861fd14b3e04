-- Processing's compare-and-set: records a newer payment state, creates the deliveries of its
-- transitions (activating the first of each line), logs them, and lets the fetch lock go.
-- KEYS: 1 payment state, 2 payment dirty, 3 payment lock, 4 arq queue, 5 transitions stream,
--       6 subscribers version, 7 converge zset, 8 stuck zset
-- ARGV: 1 seq, 2 status, 3 at, 4 token, 5 lock ttl ms, 6 state ttl s, 7 payment id,
--       8 transitions maxlen, 9 subscribers version, 10 hold ms, 11 lease ms,
--       12 open jitter ms, 13 n, 14 received ms, 15 convergence plan ('' : off), 16 final
--       state ttl s, then n (subscriber id, cap), then for each candidate transition, in
--       lifecycle order: seq, status, webhook-id, event type, delivery body (compressed: its
--       snapshot), m, m subscriber ids.
-- A final state shrinks to what kills stale hints (seq, status) and lives ``final state ttl``;
-- any other lives ``state ttl``.
-- Reply: {-2} when the subscriber list the caller matched against is stale (nothing written);
--        else {previous seq, emitted, fetch again, found stuck, then (job id, body, attempts,
--        payment id, type, received ms) of each delivery activated and started for the caller
--        (only with hold ms > 0)}.
-- The deliveries' keys are derived per (subscriber, transition) with lib/keys.lua: their number
-- varies with the candidates (docs/decisions/lua-keys.md).
-- lib: keys jobs lines acquire converge
if (redis.call('GET', KEYS[6]) or '0') ~= ARGV[9] then return {-2} end
local queue = KEYS[4]
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
local new = tonumber(ARGV[1])
local emitted = 0
local reply = {cur, 0, 0, 0}
if new > cur then
  redis.call('HSET', KEYS[1], 'seq', new, 'status', ARGV[2], 'at', ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local pid = ARGV[7]
  local hold, lease, jitter = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  local caps = {}
  local i = 17
  for _ = 1, tonumber(ARGV[13]) do
    caps[ARGV[i]] = tonumber(ARGV[i + 1])
    i = i + 2
  end
  local heads = {}
  while i <= #ARGV do
    local seq, n = tonumber(ARGV[i]), tonumber(ARGV[i + 5])
    if seq > cur then
      local tid = ARGV[i + 2]
      local skey = snapshot_key(tid)
      if n > 0 then
        redis.call('HSET', skey, 'z', ARGV[i + 4])
        redis.call('EXPIRE', skey, LINE_TTL)
      end
      for j = i + 6, i + 5 + n do
        local head, dkey = insert_delivery(queue, ARGV[j], tid, pid, seq, ARGV[i + 3],
          ARGV[14], now, now + hold)
        if head then table.insert(heads, {head, ARGV[j], tid, dkey}) end
      end
      -- No delivery refers to it (each existed already): no snapshot.
      if n > 0 and (tonumber(redis.call('HGET', skey, 'refs')) or 0) <= 0 then
        redis.call('DEL', skey)
      end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*',
        'payment_id', pid, 'status', ARGV[i + 1], 'webhook_id', tid, 'subscribers', n)
      emitted = emitted + 1
    end
    i = i + 6 + n
  end
  reply[2] = emitted
  if hold > 0 then
    for _, h in ipairs(heads) do
      local job_id, sub, tid = h[1], h[2], h[3]
      local gen = redis.call('HGET', h[4], 'gen')
      local got = try_acquire(queue, acquire_keys(sub, tid), sub, tid, gen, job_id, true,
        caps[sub], lease, jitter, now)
      if got[1] == 'ok' or got[1] == 'probe' then
        table.insert(reply, job_id)
        for k = 3, 7 do table.insert(reply, got[k] or '') end
      else
        -- Parked (no job of its own: the wake job or a finish brings it back): the held job
        -- is spent.
        cancel_job_id(queue, job_id)
      end
    end
  end
end
-- Convergence: schedule, push back, stop or report stuck (lib/converge.lua).
reply[4] = converge_after_record(KEYS[1], KEYS[7], KEYS[8], ARGV[7], new > cur,
  converge_plan(ARGV[15]))
if FINAL_STATUSES[redis.call('HGET', KEYS[1], 'status')] then
  redis.call('HDEL', KEYS[1], 'at')
  redis.call('EXPIRE', KEYS[1], ARGV[16])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
if redis.call('GET', KEYS[3]) == ARGV[4] then
  if redis.call('DEL', KEYS[2]) == 1 then
    reply[3] = 1
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
  else
    redis.call('DEL', KEYS[3])
  end
end
return reply
