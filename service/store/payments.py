"""Per-payment state in Redis: single flight of fetches, and the atomic compare-and-set that
records a newer state and creates the deliveries of its transitions in the same step.

Keys, for payment ``P``:

- ``kh:pay:P:state``  hash ``seq``, ``status``, ``at``: the last recorded state.
- ``kh:pay:P:lock``   the token of the job that is fetching ``P`` right now (single flight).
- ``kh:pay:P:dirty``  set when a hint arrived that no fetch has answered yet.
- ``kh:transitions``  a capped stream: one entry per transition emitted, for audit.

The compare-and-set creates one delivery per (transition, subscriber that wants it), in the
layout of :mod:`service.store.deliveries`, and activates the first one of each (subscriber, payment)
line. Emitting and creating deliveries is one atomic step, so a transition is never recorded
without its deliveries, nor delivered twice, and a payment's transitions enter each line in
lifecycle order.

A job that finds the lock taken leaves ``dirty`` set and stops: the holder fetches again before it
lets go, so the hint is served by a fetch that started after it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.domain.events import ARQ_JOB_PREFIX, KEY_PREFIX

# Defined in service.errors (the error tree), re-exported here.
from service.errors import StaleSubscribers as StaleSubscribers
from service.store.deliveries import FO_PREFIX, LUA_COMMON
from service.store.delivery_state import TRY_ACQUIRE_LUA, Acquired
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY

_ACQUIRE = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
local holder = redis.call('GET', KEYS[2])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: state, dirty, lock, queue, transitions log, subscribers version. ARGV: seq, status, at,
# token, lock_ttl_ms, state_ttl_s, job_prefix, fan-out prefix, payment_id, log_maxlen,
# subscribers version, hold_ms, lease_ms, open_jitter_ms, n, received_ms, then n (subscriber
# id, cap), then for each candidate transition, in lifecycle order: seq, status, webhook-id,
# event type, delivery body, n, n subscriber ids.
# Returns {-2} when the subscriber list the caller matched against is stale (nothing written);
# else {previous seq, emitted, fetch again, then (job id, body, attempts, payment id, type,
# received ms) of each delivery activated and started for the caller (only with hold_ms > 0)}.
_RECORD = (
    LUA_COMMON
    + TRY_ACQUIRE_LUA
    + """
if (redis.call('GET', KEYS[6]) or '0') ~= ARGV[11] then return {-2} end
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
local new = tonumber(ARGV[1])
local emitted = 0
local reply = {cur, 0, 0}
if new > cur then
  redis.call('HSET', KEYS[1], 'seq', new, 'status', ARGV[2], 'at', ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local job_prefix, prefix, pid = ARGV[7], ARGV[8], ARGV[9]
  local hold, lease, jitter = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
  local caps = {}
  local i = 17
  for _ = 1, tonumber(ARGV[15]) do
    caps[ARGV[i]] = tonumber(ARGV[i + 1])
    i = i + 2
  end
  local heads = {}
  while i <= #ARGV do
    local seq, n = tonumber(ARGV[i]), tonumber(ARGV[i + 5])
    if seq > cur then
      local tid = ARGV[i + 2]
      for j = i + 6, i + 5 + n do
        local head, dkey = insert_delivery(prefix, KEYS[4], job_prefix, ARGV[j], tid, pid, seq,
          ARGV[i + 3], ARGV[i + 4], ARGV[16], now, now + hold)
        if head then table.insert(heads, {head, ARGV[j], tid, dkey}) end
      end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[10], '*',
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
      local got = try_acquire(KEYS[4], prefix, job_prefix, sub, tid, gen, job_id, true,
        caps[sub], lease, jitter, now)
      if got[1] == 'ok' or got[1] == 'probe' then
        table.insert(reply, job_id)
        for k = 3, 7 do table.insert(reply, got[k] or '') end
      else
        -- Parked (with a fresh job when it may go): the held job is spent.
        redis.call('ZREM', KEYS[4], job_id)
        redis.call('DEL', job_prefix .. job_id)
      end
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('GET', KEYS[3]) == ARGV[4] then
  if redis.call('DEL', KEYS[2]) == 1 then
    reply[3] = 1
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
  else
    redis.call('DEL', KEYS[3])
  end
end
return reply
"""
)

_RELEASE = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


TRANSITIONS_LOG_KEY = f"{KEY_PREFIX}transitions"
TRANSITIONS_LOG_MAXLEN = 100_000


def state_key(payment_id: str) -> str:
    return f"{KEY_PREFIX}pay:{payment_id}:state"


def _dirty_key(payment_id: str) -> str:
    return f"{KEY_PREFIX}pay:{payment_id}:dirty"


def _lock_key(payment_id: str) -> str:
    return f"{KEY_PREFIX}pay:{payment_id}:lock"


@dataclass(frozen=True, slots=True)
class RecordResult:
    previous_seq: int
    """The sequence number recorded before (``-1``: none)."""
    emitted: int
    """How many transitions were emitted (recorded, with their deliveries)."""
    fetch_again: bool
    """A hint arrived during the fetch: the holder must fetch once more."""
    started: tuple[Acquired, ...] = ()
    """The deliveries this step activated (first in their line) and started for the caller to
    send at once (only with ``hold_ms``); their jobs are due after the hold, as safety nets."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A transition that the fetched payment shows, and the subscribers that want it."""

    seq: int
    status: str
    transition_id: str
    event_type: str
    body: bytes
    """What each of its deliveries sends (``workers.delivery.message.delivery_body``)."""
    subscriber_ids: tuple[str, ...]


class PaymentStateStore:
    """The Lua scripts over one Redis connection pool."""

    def __init__(
        self,
        redis: Redis,
        queue_name: str,
        lock_ttl_ms: int,
        state_ttl_s: int = 90 * 24 * 3600,
        dirty_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self._redis = redis
        self._queue = queue_name
        self._lock_ttl_ms = lock_ttl_ms
        self._state_ttl_s = state_ttl_s
        self._dirty_ttl_s = dirty_ttl_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, payment_id: str, token: str) -> bool:
        """Mark the payment as needing a fetch; take the fetch lock if nobody holds it."""
        keys = [_dirty_key(payment_id), _lock_key(payment_id)]
        got = await self._acquire(keys=keys, args=[token, self._lock_ttl_ms, self._dirty_ttl_s])
        return bool(got)

    async def release_for_retry(self, payment_id: str, token: str) -> None:
        """Give the lock up after a failed fetch; the payment stays marked as needing one."""
        keys = [_dirty_key(payment_id), _lock_key(payment_id)]
        await self._release(keys=keys, args=[token, self._dirty_ttl_s])

    async def record(
        self,
        payment_id: str,
        token: str,
        seq: int,
        status: str,
        at: str,
        candidates: list[Candidate],
        subscribers_version: str,
        received_at_ms: int = 0,
        caps: Mapping[str, int] | None = None,
        hold_ms: int = 0,
        lease_ms: int = 0,
        open_jitter_ms: int = 0,
    ) -> RecordResult:
        """Record ``seq`` if newer, create the deliveries of the candidates past the old state,
        drop the lock.

        With ``hold_ms``, the first delivery of each line is also started for the caller, as a
        delivery job would start it (``caps``: each subscriber's concurrency cap; a slot is held
        for ``lease_ms``): the caller sends it at once, and its job is due only ``hold_ms`` from
        now, should the caller die. Without, the heads' jobs are due at once.

        Raises :class:`StaleSubscribers` when ``subscribers_version`` is not the registry's."""
        args: list[Any] = [
            seq,
            status,
            at,
            token,
            self._lock_ttl_ms,
            self._state_ttl_s,
            ARQ_JOB_PREFIX,
            FO_PREFIX,
            payment_id,
            TRANSITIONS_LOG_MAXLEN,
            subscribers_version,
            hold_ms,
            lease_ms,
            open_jitter_ms,
            len(caps or {}),
            received_at_ms,
        ]
        for subscriber_id, cap in (caps or {}).items():
            args += [subscriber_id, cap]
        for c in candidates:
            args += [c.seq, c.status, c.transition_id, c.event_type, c.body]
            args += [len(c.subscriber_ids), *c.subscriber_ids]
        keys = [
            state_key(payment_id),
            _dirty_key(payment_id),
            _lock_key(payment_id),
            self._queue,
            TRANSITIONS_LOG_KEY,
            SUBSCRIBERS_VERSION_KEY,
        ]
        reply = await self._record(keys=keys, args=args)
        if int(reply[0]) == -2:
            raise StaleSubscribers
        previous, emitted, again, *flat = reply
        started = tuple(
            Acquired.started(flat[i].decode(), flat[i + 1 : i + 6]) for i in range(0, len(flat), 6)
        )
        return RecordResult(int(previous), int(emitted), bool(again), started)

    async def recorded(self, payment_id: str) -> dict[str, str]:
        """The last recorded state of a payment (empty when none)."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(state_key(payment_id))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}
