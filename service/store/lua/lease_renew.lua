-- Renews, in one round trip, every lease one worker holds (its heartbeat): the arq in-progress
-- keys of the jobs it runs, the fetch locks its processing runs hold, and the delivery slots
-- (with the breaker probe, if the attempt is one) of the attempts it is sending. A lease that
-- already lapsed, or that another holder took, is not renewed: it is reported lost, and its
-- holder stops acting on it (docs/processing.md, docs/fanout.md "Crash recovery").
-- KEYS: 1 arq queue, then n arq in-progress keys, then m payment lock keys, then for each of s
--       attempts: its subscriber's in-flight zset, its subscriber's breaker hash
-- ARGV: 1 now ms, 2 lease ms, 3 n, 4 m, 5 s, then m lock tokens, then s attempt job ids
-- Reply: {in-progress keys renewed, then m + s flags: 1 renewed, 0 lost}
-- A slot is renewed only while its score (lease end) is still ahead of ``now``: the same cut-off
-- delivery_acquire.lua applies before it counts slots, so a lapsed slot is never revived once
-- another attempt may have taken it. The deferred job of an attempt sent at once (its safety
-- net: score ahead of ``now``) is pushed back with its slot; a job already due (arq runs it) is
-- left alone.
local queue = KEYS[1]
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, m, s = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reply = {0}
for i = 2, n + 1 do
  reply[1] = reply[1] + redis.call('PEXPIRE', KEYS[i], lease)
end
for j = 1, m do
  local key, token = KEYS[n + 1 + j], ARGV[5 + j]
  if redis.call('GET', key) == token then
    redis.call('PEXPIRE', key, lease)
    table.insert(reply, 1)
  else
    table.insert(reply, 0)
  end
end
local until_ms = now + lease
for j = 1, s do
  local fkey, bkey = KEYS[n + m + 2 * j], KEYS[n + m + 2 * j + 1]
  local job_id = ARGV[5 + m + j]
  local score = tonumber(redis.call('ZSCORE', fkey, job_id))
  if score and score > now then
    redis.call('ZADD', fkey, 'XX', until_ms, job_id)
    if redis.call('HGET', bkey, 'probe') == job_id then
      redis.call('HSET', bkey, 'probe_until', until_ms)
    end
    local due = tonumber(redis.call('ZSCORE', queue, job_id))
    if due and due > now and due < until_ms then
      redis.call('ZADD', queue, 'XX', until_ms, job_id)
    end
    table.insert(reply, 1)
  else
    table.insert(reply, 0)
  end
end
return reply
