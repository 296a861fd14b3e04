"""The subscriber registry in Redis, and a worker's cached copy of it.

Redis holds the one registry: the hash ``layout.SUBSCRIBERS`` maps each id to the subscriber as
JSON, secret included (delivery signs with it). The model, its validation and filters are
:mod:`service.domain.subscribers` (re-exported here for the code that reads both).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as aioredis

from service.domain.subscribers import (
    ID_PATTERN,
    RESERVED_HEADERS,
    Subscriber,
    SubscriberError,
    build_subscriber,
    check_subscriber,
    check_url,
    expand_env,
    host_allowed,
    load_subscribers_file,
)
from service.errors import RegistryKeepsChanging as RegistryKeepsChanging
from service.settings import Settings
from service.store.client import redis_listeners, sentinel_primary
from service.store.layout import SUBSCRIBERS as SUBSCRIBERS_KEY
from service.store.layout import SUBSCRIBERS_VERSION as SUBSCRIBERS_VERSION_KEY
from service.targets import ForbiddenTargets, listeners_of, resolve_listeners

__all__ = [
    "ID_PATTERN",
    "RELOAD_TRIES",
    "RESERVED_HEADERS",
    "SUBSCRIBERS_KEY",
    "SUBSCRIBERS_VERSION_KEY",
    "RegistryKeepsChanging",
    "Subscriber",
    "SubscriberCache",
    "SubscriberError",
    "SubscriberStore",
    "build_subscriber",
    "check_subscriber",
    "check_url",
    "configured_targets",
    "expand_env",
    "forbidden_targets",
    "host_allowed",
    "load_subscribers_file",
    "load_subscribers_into",
]


class SubscriberStore:
    """The registry in Redis: one hash, id -> subscriber JSON."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def all(self) -> list[Subscriber]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(SUBSCRIBERS_KEY)  # type: ignore[misc]
        return sorted((Subscriber.from_json(v) for v in raw.values()), key=lambda s: s.id)

    async def get(self, subscriber_id: str) -> Subscriber | None:
        raw: bytes | None = await self.redis.hget(SUBSCRIBERS_KEY, subscriber_id)  # type: ignore[misc]
        return None if raw is None else Subscriber.from_json(raw)

    async def put(self, subscriber: Subscriber) -> None:
        subscriber.updated_at = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(SUBSCRIBERS_KEY, subscriber.id, subscriber.to_json())
            pipe.incr(SUBSCRIBERS_VERSION_KEY)
            await pipe.execute()

    async def add(self, subscriber: Subscriber) -> bool:
        """Store a new subscriber; False when the id is taken."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(SUBSCRIBERS_KEY, subscriber.id, subscriber.to_json())
            pipe.incr(SUBSCRIBERS_VERSION_KEY)
            added, _ = await pipe.execute()
        return bool(added)

    async def remove(self, subscriber_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(SUBSCRIBERS_KEY, subscriber_id)
            pipe.incr(SUBSCRIBERS_VERSION_KEY)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def set_enabled(
        self, subscriber_id: str, enabled: bool, reason: str | None = None
    ) -> Subscriber | None:
        """Enable or disable a subscriber; None when it does not exist."""
        subscriber = await self.get(subscriber_id)
        if subscriber is None:
            return None
        subscriber.enabled = enabled
        subscriber.disabled_reason = None if enabled else (reason or "disabled")
        await self.put(subscriber)
        return subscriber

    async def load(self, subscribers: Iterable[Subscriber]) -> None:
        """Upsert subscribers from the file.

        The file owns url, events, filters, headers and cap. A subscriber already stored keeps
        its runtime state (disabled by a 410 or by an operator) and, when the file gives no
        secret, the secret it already has, so restarts never change what subscribers verify with.
        """
        for subscriber in subscribers:
            stored = await self.get(subscriber.id)
            if stored is not None:
                if "secret" not in subscriber.model_fields_set:
                    subscriber.secret = stored.secret
                    subscriber.previous_secrets = stored.previous_secrets
                subscriber.enabled = stored.enabled and subscriber.enabled
                subscriber.disabled_reason = (
                    None if subscriber.enabled else stored.disabled_reason or "disabled"
                )
            await self.put(subscriber)


def configured_targets(settings: Settings) -> ForbiddenTargets:
    """kartahook's own listeners as the settings name them (unresolved): Redis or its
    Sentinels, the admin listener (any local address when ``KARTAHOOK_ADMIN_HOST`` is unset)
    and the worker's metrics port when it is served."""
    redis, sentinels = redis_listeners(settings.redis_url) if settings.redis_url else ([], [])
    metrics = settings.worker_metrics_port
    return listeners_of(
        redis,
        sentinels,
        (settings.admin_host, settings.admin_port),
        None if metrics is None else (settings.worker_metrics_host, metrics),
    )


async def forbidden_targets(
    settings: Settings, redis: aioredis.Redis | None = None
) -> ForbiddenTargets:
    """:func:`configured_targets` plus, through Sentinel, the primary's current address; every
    host resolved (:func:`service.targets.resolve_listeners`)."""
    targets = configured_targets(settings)
    if redis is not None:
        primary = await sentinel_primary(redis)
        if primary is not None:
            targets = targets.with_listener("Redis primary", *primary)
    return await resolve_listeners(targets)


async def load_subscribers_into(
    redis: aioredis.Redis,
    path: Path | None,
    allowlist: Iterable[str],
    forbidden: ForbiddenTargets | None = None,
) -> list[Subscriber]:
    """Load ``KARTAHOOK_SUBSCRIBERS_FILE`` into the Redis registry (nothing when unset)."""
    if path is None:
        return []
    subscribers = load_subscribers_file(path, allowlist, forbidden=forbidden)
    await SubscriberStore(redis).load(subscribers)
    return subscribers


# How many times in a row a script may refuse a cached copy of the registry as stale before
# the caller gives up (with :class:`RegistryKeepsChanging`).
RELOAD_TRIES = 5


class SubscriberCache:
    """A worker's copy of the registry, read in one transaction with its version.

    Reading it costs nothing; the Lua scripts that act on it (processing's compare-and-set,
    delivery's acquire and finish) get :attr:`version` and refuse to act when the registry has
    changed since, so the caller :meth:`refresh`-es and tries again. A change made through
    :class:`SubscriberStore` (admin API, CLI, a 410) therefore takes effect at the next script.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.version = ""
        self._by_id: dict[str, Subscriber] = {}
        self._sorted: list[Subscriber] = []

    @property
    def loaded(self) -> bool:
        return self.version != ""

    async def refresh(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(SUBSCRIBERS_VERSION_KEY)
            pipe.hgetall(SUBSCRIBERS_KEY)
            version, raw = await pipe.execute()
        subscribers = sorted((Subscriber.from_json(v) for v in raw.values()), key=lambda s: s.id)
        self._sorted = subscribers
        self._by_id = {s.id: s for s in subscribers}
        self.version = version.decode() if version else "0"

    async def all(self) -> list[Subscriber]:
        if not self.loaded:
            await self.refresh()
        return self._sorted

    async def get(self, subscriber_id: str) -> Subscriber | None:
        if not self.loaded:
            await self.refresh()
        return self._by_id.get(subscriber_id)
