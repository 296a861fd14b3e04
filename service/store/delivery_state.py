"""The worker's side of the delivery state: two Lua scripts over the layout of
:mod:`service.store.deliveries`. Deliveries are created by processing's compare-and-set
(:mod:`service.store.payments`), in the same step that records the transition.

- :meth:`FanoutStore.acquire` lets an attempt start, or parks the delivery: over the concurrency
  cap, breaker open, probe in flight, or subscriber disabled. A parked delivery holds no worker.
- :meth:`FanoutStore.finish` records the attempt and moves the delivery on: delivered, retried
  later (a fresh job), dead-lettered, or parked (410); then it wakes parked deliveries. After a
  success it may acquire the line's next delivery for the caller in the same step.

Both scripts refuse to act on a stale copy of the subscriber registry (see
:class:`service.store.subscribers.SubscriberCache`): ``acquire`` answers ``reload``, and ``finish``
hands nothing over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.domain.events import ARQ_JOB_PREFIX
from service.store.deliveries import FO_PREFIX, LUA_COMMON
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY

# Lua: what an attempt needs of a delivery, read when it starts (see :meth:`Acquired.started`).
DELIVERY_FIELDS_LUA = """
local function delivery_fields(dkey)
  return redis.call('HMGET', dkey, 'body', 'attempts', 'payment_id', 'type', 'received_ms')
end
"""

# Lua: let the attempt of job ``job_id`` on delivery (sub, tid, gen) start, or park the delivery
# (over the cap, breaker open, probe in flight, subscriber disabled: a fresh job when it may
# go, none while disabled). Returns {verdict, until_ms[, body, attempts, payment id, type,
# received ms]}. Shared by the
# acquire script and by processing's compare-and-set, which starts the heads it creates.
TRY_ACQUIRE_LUA = (
    DELIVERY_FIELDS_LUA
    + """
local function try_acquire(queue, prefix, job_prefix, sub, tid, gen, job_id, enabled, cap, lease,
    open_jitter, now)
  local dkey = prefix .. 'd:' .. sub .. ':' .. tid
  if redis.call('HGET', dkey, 'state') ~= 'active' or redis.call('HGET', dkey, 'gen') ~= gen then
    return {'stale', 0}
  end
  local function park(at)
    local g = redis.call('HINCRBY', dkey, 'gen', 1)
    redis.call('ZADD', prefix .. 'w:' .. sub, 'NX', now, tid)
    if at then enqueue(queue, job_prefix, sub, tid, g, at, now) end
  end
  local function start()
    redis.call('ZADD', prefix .. 'f:' .. sub, now + lease, job_id)
    return unpack(delivery_fields(dkey))
  end
  if not enabled then park(nil) return {'disabled', 0} end
  local fkey = prefix .. 'f:' .. sub
  local bkey = prefix .. 'b:' .. sub
  redis.call('ZREMRANGEBYSCORE', fkey, '-inf', now)
  if redis.call('ZSCORE', fkey, job_id) then return {'ok', 0, start()} end
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if open_until > now then
    park(open_until + open_jitter)
    return {'open', open_until}
  end
  if open_until > 0 then
    local probe = redis.call('HGET', bkey, 'probe')
    local probe_until = tonumber(redis.call('HGET', bkey, 'probe_until')) or 0
    if probe and probe ~= '' and probe ~= job_id and probe_until > now then
      park(probe_until)
      return {'probing', probe_until}
    end
    redis.call('HSET', bkey, 'probe', job_id, 'probe_until', now + lease)
    return {'probe', 0, start()}
  end
  if redis.call('ZCARD', fkey) >= cap then
    park(now + lease)
    return {'cap', 0}
  end
  return {'ok', 0, start()}
end
"""
)

# KEYS: queue, subscribers version. ARGV: prefix, job_prefix, now, sub, tid, gen, job_id, enabled,
#   cap, lease_ms, open_jitter_ms, subscribers version ('reload' when it is not the registry's).
ACQUIRE_LUA = (
    LUA_COMMON
    + TRY_ACQUIRE_LUA
    + """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[12] then return {'reload', 0} end
return try_acquire(KEYS[1], ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1',
  tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[3]))
"""
)

# KEYS: queue, subscribers version. ARGV: prefix, job_prefix, now, sub, tid, gen, job_id,
#   outcome (ok|fail|gone|removed), next (retry|dead|''), retry_at_ms, threshold, cooldown_ms,
#   cap, enabled, done_ttl_s, log_entry, log_cap, status, error, hold_ms, lease_ms,
#   subscribers version.
# With hold_ms > 0, the next delivery of the line that a success activates is acquired for the
# caller in the same step (when the caller's subscriber list is current and the cap allows) and
# handed back to run at once: its job stays queued, deferred by hold_ms, as the safety net should
# the caller die. With no next one in the line, the longest-parked delivery of the subscriber
# (waiting for a slot) is handed over the same way, instead of being woken into a job.
# Returns {result, woken, dead letters, handed job id[, its body, attempts, payment id, type,
# received ms]}.
FINISH_LUA = (
    LUA_COMMON
    + DELIVERY_FIELDS_LUA
    + """
local queue = KEYS[1]
local prefix, job_prefix, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sub, tid, gen, job_id = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local outcome, nxt, retry_at = ARGV[8], ARGV[9], tonumber(ARGV[10])
local threshold, cooldown, cap = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local enabled, done_ttl = ARGV[14] == '1', tonumber(ARGV[15])
local log_entry, log_cap, status, err = ARGV[16], tonumber(ARGV[17]), ARGV[18], ARGV[19]
local hold, lease = tonumber(ARGV[20]), tonumber(ARGV[21])
local dkey = prefix .. 'd:' .. sub .. ':' .. tid
local fkey = prefix .. 'f:' .. sub
local bkey = prefix .. 'b:' .. sub
local handed, handed_fields = '', {}
-- The caller's copy of the subscriber is current: it may be handed more work.
local current = enabled and (redis.call('GET', KEYS[2]) or '0') == ARGV[22]
redis.call('ZREM', fkey, job_id)
-- This attempt is over: its job (an arq run, or the safety job of an inline run) is spent.
redis.call('ZREM', queue, job_id)
redis.call('DEL', job_prefix .. job_id)
if log_entry ~= '' then
  local lkey = prefix .. 'log:' .. sub
  redis.call('LPUSH', lkey, log_entry)
  redis.call('LTRIM', lkey, 0, log_cap - 1)
end
local breaker_open = false
if outcome == 'ok' then
  redis.call('HSET', bkey, 'fails', 0, 'open_until', 0, 'probe', '')
elseif outcome == 'fail' then
  local fails = redis.call('HINCRBY', bkey, 'fails', 1)
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if redis.call('HGET', bkey, 'probe') == job_id then
    redis.call('HSET', bkey, 'open_until', now + cooldown, 'probe', '')
    breaker_open = true
  elseif open_until > 0 then
    breaker_open = true
  elseif fails >= threshold then
    redis.call('HSET', bkey, 'open_until', now + cooldown)
    breaker_open = true
  end
end
local result = 'stale'
local state = redis.call('HGET', dkey, 'state')
if state == 'active' and redis.call('HGET', dkey, 'gen') == gen then
  local pid = redis.call('HGET', dkey, 'payment_id')
  if outcome ~= 'removed' then
    redis.call('HINCRBY', dkey, 'attempts', 1)
    redis.call('HSET', dkey, 'last_status', status, 'last_error', err, 'last_ms', now)
  end
  if outcome == 'ok' then
    redis.call('HSET', dkey, 'state', 'delivered', 'delivered_ms', now)
    redis.call('EXPIRE', dkey, done_ttl)
    -- The caller takes the line's next delivery when it may: its job then waits the hold.
    local take = hold > 0 and current and redis.call('ZCARD', fkey) < cap
    local nxt_job, nxt_dkey = advance(prefix, queue, job_prefix, sub, pid, tid, now,
      take and now + hold or now)
    if take and nxt_job then
      redis.call('ZADD', fkey, now + lease, nxt_job)
      handed = nxt_job
      handed_fields = delivery_fields(nxt_dkey)
    end
    result = 'delivered'
  elseif outcome == 'removed' then
    redis.call('HSET', dkey, 'state', 'dropped')
    redis.call('EXPIRE', dkey, done_ttl)
    advance(prefix, queue, job_prefix, sub, pid, tid, now)
    result = 'dropped'
  elseif outcome == 'gone' then
    redis.call('HINCRBY', dkey, 'gen', 1)
    redis.call('ZADD', prefix .. 'w:' .. sub, 'NX', now, tid)
    result = 'parked'
  elseif nxt == 'retry' then
    local g = redis.call('HINCRBY', dkey, 'gen', 1)
    enqueue(queue, job_prefix, sub, tid, g, retry_at, now)
    result = 'retry'
  else
    redis.call('HSET', dkey, 'state', 'dead', 'dead_ms', now)
    redis.call('ZADD', prefix .. 'dead', now, sub .. '/' .. tid)
    redis.call('ZADD', prefix .. 'dead:' .. sub, now, tid)
    advance(prefix, queue, job_prefix, sub, pid, tid, now)
    result = 'dead'
  end
end
local woken = 0
if (enabled or outcome == 'removed') and not breaker_open and outcome ~= 'gone' then
  local open_until = tonumber(redis.call('HGET', bkey, 'open_until')) or 0
  if open_until == 0 then
    local free = cap - redis.call('ZCARD', fkey)
    if outcome == 'removed' then free = 1 end
    if free > 0 and handed == '' and hold > 0 and outcome == 'ok' and current then
      -- Nothing next in this line: the caller takes the slot with a parked delivery instead.
      local job, dkey = unpark_one(prefix, queue, job_prefix, sub, now, now + hold)
      if job then
        redis.call('ZADD', fkey, now + lease, job)
        handed = job
        handed_fields = delivery_fields(dkey)
        free = free - 1
        woken = 1
      end
    end
    if free > 0 then woken = woken + wake(prefix, queue, job_prefix, sub, free, now) end
  end
end
return {result, woken, redis.call('ZCARD', prefix .. 'dead'), handed, unpack(handed_fields)}
"""
)


@dataclass(frozen=True, slots=True)
class Acquired:
    """What :meth:`FanoutStore.acquire` decided: ``ok``/``probe`` start; the rest park or skip.

    When the attempt may start, what it sends comes along, read in the same script: the body,
    the attempts so far, and the payment id, event type and webhook receipt time (for the log
    line and the latency metric).
    """

    verdict: str
    until_ms: int
    body: bytes | None = None
    attempts: int = 0
    job_id: str = ""
    """The job whose attempt this is (for the line's next delivery acquired by
    :meth:`FanoutStore.finish`, or a head started by processing, the safety-net job)."""
    payment_id: str = ""
    event_type: str = ""
    received_at_ms: int = 0

    @property
    def may_send(self) -> bool:
        return self.verdict in ("ok", "probe")

    @property
    def subscriber_id(self) -> str:
        return self.job_id.split(":")[1]  # fdl:<sub>:<webhook-id>:<gen>

    @property
    def webhook_id(self) -> str:
        return self.job_id.split(":")[2]

    @classmethod
    def started(cls, job_id: str, fields: list[Any], verdict: str = "ok") -> Acquired:
        """A started attempt from ``delivery_fields``: body, attempts, payment id, type,
        received ms."""
        body, attempts, payment_id, event_type, received = (list(fields) + [None] * 5)[:5]
        return cls(
            verdict,
            0,
            body or None,
            int(attempts or 0),
            job_id,
            _text(payment_id or b""),
            _text(event_type or b""),
            int(received or 0),
        )

    @classmethod
    def from_reply(cls, reply: list[Any], job_id: str) -> Acquired:
        """From ``try_acquire``'s reply: {verdict, until_ms[, delivery fields]}."""
        verdict = _text(reply[0])
        if len(reply) > 2:
            return cls.started(job_id, reply[2:], verdict)
        return cls(verdict, int(reply[1]), job_id=job_id)


@dataclass(frozen=True, slots=True)
class Finished:
    result: str
    """delivered, retry, dead, parked, dropped, or stale."""
    woken: int
    dead_letters: int
    handed: Acquired | None = None
    """The next delivery of the same (subscriber, payment), acquired for the caller to run at
    once (only with ``hold_ms``); its queued job is deferred as a safety net."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FanoutStore:
    """Atomic delivery state changes for the workers."""

    def __init__(self, redis: aioredis.Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._finish = redis.register_script(FINISH_LUA)

    async def acquire(
        self,
        *,
        subscriber_id: str,
        transition_id: str,
        gen: int,
        job_id: str,
        enabled: bool,
        cap: int,
        lease_ms: int,
        open_jitter_ms: int,
        now_ms: int,
        subscribers_version: str,
    ) -> Acquired:
        reply = await self._acquire(
            keys=[self.queue_name, SUBSCRIBERS_VERSION_KEY],
            args=[
                FO_PREFIX,
                ARQ_JOB_PREFIX,
                now_ms,
                subscriber_id,
                transition_id,
                gen,
                job_id,
                "1" if enabled else "0",
                cap,
                lease_ms,
                open_jitter_ms,
                subscribers_version,
            ],
        )
        return Acquired.from_reply(reply, job_id)

    async def finish(
        self,
        *,
        subscriber_id: str,
        transition_id: str,
        gen: int,
        job_id: str,
        outcome: str,
        retry_at_ms: int | None,
        breaker_failures: int,
        breaker_cooldown_ms: int,
        cap: int,
        enabled: bool,
        done_ttl_s: int,
        log_entry: dict[str, Any] | None,
        log_cap: int,
        status: str,
        error: str,
        now_ms: int,
        hold_ms: int = 0,
        lease_ms: int = 0,
        subscribers_version: str = "",
    ) -> Finished:
        reply = await self._finish(
            keys=[self.queue_name, SUBSCRIBERS_VERSION_KEY],
            args=[
                FO_PREFIX,
                ARQ_JOB_PREFIX,
                now_ms,
                subscriber_id,
                transition_id,
                gen,
                job_id,
                outcome,
                "retry" if retry_at_ms is not None else "dead",
                retry_at_ms or 0,
                breaker_failures,
                breaker_cooldown_ms,
                cap,
                "1" if enabled else "0",
                done_ttl_s,
                b"" if log_entry is None else orjson.dumps(log_entry),
                log_cap,
                status,
                error,
                hold_ms,
                lease_ms,
                subscribers_version,
            ],
        )
        handed = _text(reply[3])
        return Finished(
            result=_text(reply[0]),
            woken=int(reply[1]),
            dead_letters=int(reply[2]),
            handed=Acquired.started(handed, reply[4:]) if handed else None,
        )
