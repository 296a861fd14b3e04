"""Per-payment state in Redis: single flight of fetches, and the atomic compare-and-set that
records a newer state and hands its transitions to fan-out in the same step.

Keys, for payment ``P``:

- ``kh:pay:P:state``  hash ``seq``, ``status``, ``at``: the last recorded state.
- ``kh:pay:P:lock``   the token of the job that is fetching ``P`` right now (single flight).
- ``kh:pay:P:dirty``  set when a hint arrived that no fetch has answered yet.
- ``kh:transitions``  a capped stream: one entry per transition emitted, for audit.

A job that finds the lock taken leaves ``dirty`` set and stops: the holder fetches again before it
lets go, so the hint is served by a fetch that started after it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.jobs import ARQ_EXPIRES_EXTRA_MS, ARQ_JOB_PREFIX, KEY_PREFIX

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

# KEYS: state, dirty, lock, queue, transitions log. ARGV: seq, status, at, token, lock_ttl_ms,
# state_ttl_s, job_prefix, job_expiry_ms, payment_id, log_maxlen, then
# (seq, status, job_id, job_bytes) for each candidate transition, in lifecycle order.
_RECORD = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
local new = tonumber(ARGV[1])
local emitted = 0
if new > cur then
  redis.call('HSET', KEYS[1], 'seq', new, 'status', ARGV[2], 'at', ARGV[3])
  -- Scores from the server's clock: emissions of one payment are ordered across runs.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 11, #ARGV, 4 do
    if tonumber(ARGV[i]) > cur then
      redis.call('SET', ARGV[7] .. ARGV[i + 2], ARGV[i + 3], 'PX', ARGV[8], 'NX')
      redis.call('ZADD', KEYS[4], 'NX', now + emitted, ARGV[i + 2])
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[10], '*',
        'payment_id', ARGV[9], 'status', ARGV[i + 1], 'job_id', ARGV[i + 2])
      emitted = emitted + 1
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
local again = 0
if redis.call('GET', KEYS[3]) == ARGV[4] then
  if redis.call('DEL', KEYS[2]) == 1 then
    again = 1
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
  else
    redis.call('DEL', KEYS[3])
  end
end
return {cur, emitted, again}
"""

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
    """How many transitions were handed to fan-out."""
    fetch_again: bool
    """A hint arrived during the fetch: the holder must fetch once more."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A transition that the fetched payment shows, with its arq job ready to be written."""

    seq: int
    status: str
    job_id: str
    job_bytes: bytes


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
    ) -> RecordResult:
        """Record ``seq`` if newer, enqueue the candidates past the old state, drop the lock."""
        args: list[Any] = [
            seq,
            status,
            at,
            token,
            self._lock_ttl_ms,
            self._state_ttl_s,
            ARQ_JOB_PREFIX,
            ARQ_EXPIRES_EXTRA_MS,
            payment_id,
            TRANSITIONS_LOG_MAXLEN,
        ]
        for candidate in candidates:
            args += [candidate.seq, candidate.status, candidate.job_id, candidate.job_bytes]
        keys = [
            state_key(payment_id),
            _dirty_key(payment_id),
            _lock_key(payment_id),
            self._queue,
            TRANSITIONS_LOG_KEY,
        ]
        previous, emitted, again = await self._record(keys=keys, args=args)
        return RecordResult(int(previous), int(emitted), bool(again))

    async def recorded(self, payment_id: str) -> dict[str, str]:
        """The last recorded state of a payment (empty when none)."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(state_key(payment_id))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}
