"""Delivery state in Redis: the key layout, and what the admin side does with it.

Fan-out (``workers/fanout``) drives deliveries; the admin API reads dead letters and attempt logs
and replays dead letters. Both sides go through the layout and Lua below, so it lives here, in a
leaf module ``service`` may import. Every state change that involves more than one key is one
Lua script, so a crash between two writes never loses or duplicates a delivery.

Key layout (``{s}`` subscriber id, ``{t}`` transition id = webhook-id, ``{p}`` payment id):

- ``kh:fo:d:{s}:{t}``  hash, one delivery: state (queued, active, delivered, dead, dropped), gen
  (bumped whenever its next arq job changes, so a stale job knows it is stale), attempts, seq,
  payment_id, type, the body sent (the same bytes on every attempt and replay), when its webhook
  was received, times, last status/error. Kept ``delivery_done_ttl_s``
  after success, so a duplicate fan-out job creates nothing; kept without TTL while dead.
- ``kh:fo:o:{s}:{p}``  zset of the pending deliveries of one (subscriber, payment), score = seq.
- ``kh:fo:h:{s}:{p}``  string, the one active delivery of that pair (its head). Only the head has
  an arq job; the next one is activated when the head is delivered or dead-lettered.
- ``kh:fo:w:{s}``      zset of parked heads (over the cap, breaker open, subscriber disabled),
  woken when a slot frees, the breaker closes, or the subscriber is enabled.
- ``kh:fo:f:{s}``      zset of in-flight job ids, score = lease end (a dead worker's slot expires).
- ``kh:fo:b:{s}``      hash, circuit breaker: fails, open_until (ms), probe, probe_until.
- ``kh:fo:dead``       zset of ``{s}/{t}`` by dead-letter time; ``kh:fo:dead:{s}``: zset of ``{t}``.
- ``kh:fo:log:{s}``    list, the attempt log, newest first, capped.

Each attempt is a fresh arq job ``fdl:{s}:{t}:{gen}`` written by the Lua scripts in arq's own
format, so no job outlives arq's one-day job-key TTL however long the retry schedule is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.domain.events import ARQ_EXPIRES_EXTRA_MS, ARQ_JOB_PREFIX, KEY_PREFIX

FO_PREFIX = f"{KEY_PREFIX}fo:"
FANOUT_DELIVER = "fanout_deliver"
DELIVER_JOB_PREFIX = "fdl:"
DEAD_ALL_KEY = f"{FO_PREFIX}dead"


def delivery_key(subscriber_id: str, transition_id: str) -> str:
    return f"{FO_PREFIX}d:{subscriber_id}:{transition_id}"


def order_key(subscriber_id: str, payment_id: str) -> str:
    return f"{FO_PREFIX}o:{subscriber_id}:{payment_id}"


def head_key(subscriber_id: str, payment_id: str) -> str:
    return f"{FO_PREFIX}h:{subscriber_id}:{payment_id}"


def waiting_key(subscriber_id: str) -> str:
    return f"{FO_PREFIX}w:{subscriber_id}"


def inflight_key(subscriber_id: str) -> str:
    return f"{FO_PREFIX}f:{subscriber_id}"


def breaker_key(subscriber_id: str) -> str:
    return f"{FO_PREFIX}b:{subscriber_id}"


def dead_key(subscriber_id: str) -> str:
    return f"{FO_PREFIX}dead:{subscriber_id}"


def attempt_log_key(subscriber_id: str) -> str:
    return f"{FO_PREFIX}log:{subscriber_id}"


def deliver_job_id(subscriber_id: str, transition_id: str, gen: int) -> str:
    return f"{DELIVER_JOB_PREFIX}{subscriber_id}:{transition_id}:{gen}"


def parse_deliver_job_id(job_id: str) -> int:
    """The generation number at the end of a delivery job id (-1 when it has none)."""
    try:
        return int(job_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


# Lua shared by every script: writing arq jobs, activating the next delivery, waking parked ones.
# ARGV conventions of the callers: the prefix, arq's job prefix and the queue are passed in, and
# keys of other deliveries are built here from the prefix (single Redis or Sentinel, not Cluster).
LUA_COMMON = """
local function enqueue(queue, job_prefix, sub, tid, gen, score, now)
  local job_id = 'fdl:' .. sub .. ':' .. tid .. ':' .. gen
  local body = '{"t":null,"f":"fanout_deliver","a":[' .. cjson.encode(sub) .. ',' ..
    cjson.encode(tid) .. '],"k":{},"et":' .. now .. '}'
  local ttl = score - now + EXPIRES_EXTRA
  if ttl < EXPIRES_EXTRA then ttl = EXPIRES_EXTRA end
  redis.call('SET', job_prefix .. job_id, body, 'PX', ttl)
  redis.call('ZADD', queue, score, job_id)
  return job_id
end

local function cancel_job(queue, job_prefix, sub, tid, gen)
  local job_id = 'fdl:' .. sub .. ':' .. tid .. ':' .. gen
  redis.call('ZREM', queue, job_id)
  redis.call('DEL', job_prefix .. job_id)
end

-- Makes the first pending delivery of (sub, pid) its head, unless it has one; returns the job
-- id of the head's job, due at ``at`` (default now), and the head's key; or false. A caller
-- that runs the head at once passes a later ``at``: the job is then its safety net.
local function activate_next(prefix, queue, job_prefix, sub, pid, now, at)
  local hkey = prefix .. 'h:' .. sub .. ':' .. pid
  if redis.call('EXISTS', hkey) == 1 then return false end
  local okey = prefix .. 'o:' .. sub .. ':' .. pid
  local nxt = redis.call('ZRANGE', okey, 0, 0)[1]
  if not nxt then return false end
  redis.call('SET', hkey, nxt)
  local dkey = prefix .. 'd:' .. sub .. ':' .. nxt
  redis.call('HSET', dkey, 'state', 'active', 'activated_ms', now)
  local gen = redis.call('HINCRBY', dkey, 'gen', 1)
  return enqueue(queue, job_prefix, sub, nxt, gen, at or now, now), dkey
end

-- Creates the delivery of transition ``tid`` to ``sub`` unless it exists, and activates it when
-- it is first in its (sub, pid) line. Returns the activated head's job id, or false.
local function insert_delivery(prefix, queue, job_prefix, sub, tid, pid, seq, etype, body,
    received, now, at)
  local dkey = prefix .. 'd:' .. sub .. ':' .. tid
  if redis.call('EXISTS', dkey) == 1 then return false end
  redis.call('HSET', dkey, 'sub', sub, 'tid', tid, 'payment_id', pid, 'seq', seq,
    'type', etype, 'state', 'queued', 'gen', 0, 'attempts', 0, 'body', body,
    'received_ms', received, 'created_ms', now)
  redis.call('ZADD', prefix .. 'o:' .. sub .. ':' .. pid, seq, tid)
  return activate_next(prefix, queue, job_prefix, sub, pid, now, at)
end

-- Takes the longest-parked delivery of ``sub`` off the waiting set and gives it a fresh job,
-- due at ``at`` (default now); returns the job id and the delivery's key, or false.
local function unpark_one(prefix, queue, job_prefix, sub, now, at)
  local wkey = prefix .. 'w:' .. sub
  while true do
    local tid = redis.call('ZPOPMIN', wkey)[1]
    if not tid then return false end
    local dkey = prefix .. 'd:' .. sub .. ':' .. tid
    if redis.call('HGET', dkey, 'state') == 'active' then
      local old = tonumber(redis.call('HGET', dkey, 'gen')) or 0
      cancel_job(queue, job_prefix, sub, tid, old)
      local gen = redis.call('HINCRBY', dkey, 'gen', 1)
      return enqueue(queue, job_prefix, sub, tid, gen, at or now, now), dkey
    end
  end
end

local function wake(prefix, queue, job_prefix, sub, count, now)
  local woken = 0
  while woken < count and unpark_one(prefix, queue, job_prefix, sub, now) do
    woken = woken + 1
  end
  return woken
end

local function advance(prefix, queue, job_prefix, sub, pid, tid, now, at)
  redis.call('ZREM', prefix .. 'o:' .. sub .. ':' .. pid, tid)
  local hkey = prefix .. 'h:' .. sub .. ':' .. pid
  if redis.call('GET', hkey) == tid then redis.call('DEL', hkey) end
  return activate_next(prefix, queue, job_prefix, sub, pid, now, at)
end
""".replace("EXPIRES_EXTRA", str(ARQ_EXPIRES_EXTRA_MS))

# KEYS: queue. ARGV: prefix, job_prefix, now_ms, sub, tid.
REPLAY_LUA = (
    LUA_COMMON
    + """
local queue = KEYS[1]
local prefix, job_prefix, now, sub, tid = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local dkey = prefix .. 'd:' .. sub .. ':' .. tid
local state = redis.call('HGET', dkey, 'state')
if not state then return 'missing' end
if state ~= 'dead' then return 'not_dead' end
redis.call('ZREM', prefix .. 'dead', sub .. '/' .. tid)
redis.call('ZREM', prefix .. 'dead:' .. sub, tid)
redis.call('HSET', dkey, 'state', 'queued', 'attempts', 0, 'replayed_ms', now)
redis.call('HINCRBY', dkey, 'replays', 1)
local pid = redis.call('HGET', dkey, 'payment_id')
local seq = tonumber(redis.call('HGET', dkey, 'seq'))
redis.call('ZADD', prefix .. 'o:' .. sub .. ':' .. pid, seq, tid)
activate_next(prefix, queue, job_prefix, sub, pid, now)
return 'ok'
"""
)

# KEYS: queue. ARGV: prefix, job_prefix, now_ms, sub, count. Also resets the breaker.
WAKE_LUA = (
    LUA_COMMON
    + """
local queue = KEYS[1]
local prefix, job_prefix, now, sub = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('DEL', prefix .. 'b:' .. sub)
return wake(prefix, queue, job_prefix, sub, tonumber(ARGV[5]), now)
"""
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered delivery, as the admin API and the CLI show it."""

    subscriber: str
    transition_id: str
    payment_id: str
    type: str
    seq: int
    attempts: int
    dead_at_ms: int
    last_status: str
    last_error: str
    replays: int
    body: dict[str, Any] | None = None
    """The event sent (``{"id", "type", "timestamp", "data"}``), when asked for."""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "subscriber": self.subscriber,
            "webhook_id": self.transition_id,
            "payment_id": self.payment_id,
            "type": self.type,
            "seq": self.seq,
            "attempts": self.attempts,
            "dead_at_ms": self.dead_at_ms,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "replays": self.replays,
        }
        if self.body is not None:
            data["body"] = self.body
        return data


def _text(fields: dict[bytes, bytes], name: str) -> str:
    return fields.get(name.encode(), b"").decode()


def _int(fields: dict[bytes, bytes], name: str) -> int:
    try:
        return int(fields.get(name.encode(), b"0"))
    except ValueError:
        return 0


def dead_letter_from_hash(fields: dict[bytes, bytes], with_body: bool = False) -> DeadLetter | None:
    if _text(fields, "state") != "dead":
        return None
    body = orjson.loads(fields[b"body"]) if with_body else None
    return DeadLetter(
        subscriber=_text(fields, "sub"),
        transition_id=_text(fields, "tid"),
        payment_id=_text(fields, "payment_id"),
        type=_text(fields, "type"),
        seq=_int(fields, "seq"),
        attempts=_int(fields, "attempts"),
        dead_at_ms=_int(fields, "dead_ms"),
        last_status=_text(fields, "last_status"),
        last_error=_text(fields, "last_error"),
        replays=_int(fields, "replays"),
        body=body,
    )


class DeliveryAdmin:
    """What operators do with deliveries: read dead letters and attempt logs, replay, wake."""

    def __init__(self, redis: aioredis.Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._replay = redis.register_script(REPLAY_LUA)
        self._wake = redis.register_script(WAKE_LUA)

    async def dead_letter_count(self, subscriber_id: str | None = None) -> int:
        key = DEAD_ALL_KEY if subscriber_id is None else dead_key(subscriber_id)
        return int(await self.redis.zcard(key))

    async def _refs(
        self, subscriber_id: str | None, since_ms: int | None, limit: int | None
    ) -> list[tuple[str, str]]:
        low = "-inf" if since_ms is None else since_ms
        start, num = (None, None) if limit is None else (0, limit)
        key = DEAD_ALL_KEY if subscriber_id is None else dead_key(subscriber_id)
        members: list[bytes] = await self.redis.zrangebyscore(key, low, "+inf", start, num)
        if subscriber_id is None:
            refs = [m.decode().split("/", 1) for m in members]
            return [(r[0], r[1]) for r in refs if len(r) == 2]
        return [(subscriber_id, m.decode()) for m in members]

    async def dead_letters(
        self, subscriber_id: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one subscriber and since a time."""
        refs = await self._refs(subscriber_id, since_ms, limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub, tid in refs:
                pipe.hgetall(delivery_key(sub, tid))
            rows = await pipe.execute()
        letters = [dead_letter_from_hash(fields) for fields in rows]
        return [letter for letter in letters if letter is not None]

    async def dead_letter(self, subscriber_id: str, transition_id: str) -> DeadLetter | None:
        key = delivery_key(subscriber_id, transition_id)
        fields: dict[bytes, bytes] = await self.redis.hgetall(key)  # type: ignore[misc]
        return dead_letter_from_hash(fields, with_body=True) if fields else None

    async def replay(self, subscriber_id: str, transition_id: str, now_ms: int) -> str:
        """Queue a dead letter again, same webhook-id: 'ok', 'missing' or 'not_dead'."""
        result = await self._replay(
            keys=[self.queue_name],
            args=[FO_PREFIX, ARQ_JOB_PREFIX, now_ms, subscriber_id, transition_id],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def replay_many(
        self, subscriber_id: str | None, since_ms: int | None, now_ms: int
    ) -> list[dict[str, str]]:
        """Replay every dead letter of a subscriber, or since a time, or both."""
        replayed: list[dict[str, str]] = []
        for sub, tid in await self._refs(subscriber_id, since_ms, None):
            if await self.replay(sub, tid, now_ms) == "ok":
                replayed.append({"subscriber": sub, "webhook_id": tid})
        return replayed

    async def wake(self, subscriber_id: str, count: int, now_ms: int) -> int:
        """Reset the breaker and start up to ``count`` parked deliveries of a subscriber."""
        woken = await self._wake(
            keys=[self.queue_name],
            args=[FO_PREFIX, ARQ_JOB_PREFIX, now_ms, subscriber_id, count],
        )
        return int(woken)

    async def attempts(self, subscriber_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The attempt log of a subscriber, newest first."""
        key = attempt_log_key(subscriber_id)
        rows: list[bytes] = await self.redis.lrange(key, 0, max(limit, 1) - 1)  # type: ignore[misc]
        return [orjson.loads(row) for row in rows]
