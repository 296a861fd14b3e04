"""The whole Redis keyspace of a test, and one assertion over it: the exact set of keys, the type
of each, and its TTL class (none, or a remaining time within a range)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.store.jobs import deserialize
from service.store.layout import ARQ_EXPIRES_EXTRA_MS


@dataclass(frozen=True, slots=True)
class Ttl:
    """A key that expires, with its remaining time (``PTTL``) between ``low_ms`` and
    ``high_ms``."""

    low_ms: int
    high_ms: int

    def matches(self, pttl_ms: int) -> bool:
        return self.low_ms <= pttl_ms <= self.high_ms


NO_TTL = None
"""A key that never expires (``PTTL`` -1)."""

TtlClass = Ttl | None
Expected = dict[str, tuple[str, TtlClass]]

# Slack for a TTL set a moment ago: the tests take far less than this between write and check.
SLACK_MS = 60_000


def ttl_ms(ms: int, slack_ms: int = SLACK_MS) -> Ttl:
    """A TTL set to ``ms`` a moment ago."""
    return Ttl(max(ms - slack_ms, 1), ms)


def ttl_s(seconds: int, slack_ms: int = SLACK_MS) -> Ttl:
    """A TTL set to ``seconds`` a moment ago."""
    return ttl_ms(seconds * 1000, slack_ms)


def job_ttl(due_in_ms: int) -> Ttl:
    """The TTL of an arq job written by the Lua scripts, due ``due_in_ms`` after their now."""
    return ttl_ms(max(due_in_ms, 0) + ARQ_EXPIRES_EXTRA_MS)


async def keyspace(redis: aioredis.Redis) -> dict[str, tuple[str, int]]:
    """Every key of the database: its type and ``PTTL`` (-1 when it never expires)."""
    found: dict[str, tuple[str, int]] = {}
    for raw in sorted(await redis.keys("*")):
        kind = await redis.type(raw)
        pttl = int(await redis.pttl(raw))
        found[raw.decode()] = (kind.decode() if isinstance(kind, bytes) else str(kind), pttl)
    return found


def _ttl_ok(expected: TtlClass, pttl: int) -> bool:
    if expected is None:
        return pttl == -1
    return expected.matches(pttl)


async def assert_keyspace(redis: aioredis.Redis, expected: Expected) -> None:
    """Fail unless the keyspace is exactly ``expected``: the same keys, each of that type and
    TTL class."""
    actual = await keyspace(redis)
    leaked = sorted(set(actual) - set(expected))
    missing = sorted(set(expected) - set(actual))
    assert not leaked and not missing, f"leaked keys {leaked}, missing keys {missing}"
    wrong = {
        key: (actual[key], expected[key])
        for key in expected
        if actual[key][0] != expected[key][0] or not _ttl_ok(expected[key][1], actual[key][1])
    }
    assert not wrong, f"(actual type, pttl) vs (expected type, ttl class): {wrong}"


async def zset(redis: aioredis.Redis, key: str) -> dict[str, int]:
    """A sorted set's members and their scores (as integers)."""
    rows = await redis.zrange(key, 0, -1, withscores=True)
    return {member.decode(): int(score) for member, score in rows}


async def hash_of(redis: aioredis.Redis, key: str) -> dict[str, str]:
    """A hash's fields as text."""
    raw: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


async def job_body(redis: aioredis.Redis, key: str) -> Any:
    """An arq job, decoded with the project's job deserializer."""
    raw = await redis.get(key)
    assert raw is not None, f"no job at {key}"
    return deserialize(raw)


async def server_ms(redis: aioredis.Redis) -> int:
    """The Redis server's clock in ms (what the scripts that call ``TIME`` see)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
