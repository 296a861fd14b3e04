"""Dead-lettered events: hints that processing gave up on, kept for listing, inspection and retry.

Written by the worker, read and retried through the admin API and ``kartahook dlq --kind events``.
Keys (:mod:`service.store.layout`): ``EVENT_DLQ_ENTRIES`` (hash: id → JSON entry) and
``EVENT_DLQ_INDEX`` (sorted set: id by time dead-lettered, epoch seconds). Entries older than
``operator_ttl_s`` (30 days by default) are dropped whenever one is added: the store is bounded
by the rate of dead letters x that TTL; its size is a metric (``kartahook status``, ``/metrics``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
from redis.asyncio import Redis

from service.clock import now_ms
from service.domain.events import EventHint
from service.store import layout
from service.store.jobs import arq_job_bytes

ENTRIES_KEY = layout.EVENT_DLQ_ENTRIES
INDEX_KEY = layout.EVENT_DLQ_INDEX


class EventDeadLetters:
    """The store of dead-lettered events."""

    def __init__(
        self,
        redis: Redis,
        queue_name: str = layout.DEFAULT_QUEUE,
        ttl_s: int = layout.OPERATOR_TTL_S,
    ) -> None:
        """``ttl_s``: how long an entry is kept (``Settings.operator_ttl_s``)."""
        self._redis = redis
        self._queue = queue_name
        self._ttl_s = ttl_s

    async def add(self, hint: EventHint, reason: str, last_error: str) -> None:
        now = time.time()
        entry_id = layout.event_job_id(hint.source, hint.event_id)
        entry = {
            "id": entry_id,
            "hint": asdict(hint),
            "reason": reason,
            "last_error": last_error,
            "dead_at": now,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(ENTRIES_KEY, entry_id, orjson.dumps(entry).decode())
            pipe.zadd(INDEX_KEY, {entry_id: now})
            pipe.zrangebyscore(INDEX_KEY, "-inf", f"({now - self._ttl_s}")
            expired: list[str] = [m.decode() for m in (await pipe.execute())[-1]]
        if expired:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(ENTRIES_KEY, *expired)
                pipe.zrem(INDEX_KEY, *expired)
                await pipe.execute()

    async def count(self) -> int:
        return int(await self._redis.zcard(INDEX_KEY))

    async def entries(self, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        """Entries, oldest first, dead-lettered at or after ``since`` (epoch seconds)."""
        low: float | str = "-inf" if since is None else since
        ids = await self._redis.zrangebyscore(INDEX_KEY, low, "+inf", start=0, num=limit)
        if not ids:
            return []
        raw: list[bytes | None] = await self._redis.hmget(ENTRIES_KEY, ids)  # type: ignore[misc]
        return [orjson.loads(item) for item in raw if item]

    async def get(self, entry_id: str) -> dict[str, Any] | None:
        raw: bytes | None = await self._redis.hget(ENTRIES_KEY, entry_id)  # type: ignore[misc]
        return orjson.loads(raw) if raw else None

    async def retry(self, entry_id: str) -> bool:
        """Queue a fresh ``process_event`` job (attempt 0) for an entry and remove the entry, in
        one transaction. ``False`` when there is no such entry."""
        entry = await self.get(entry_id)
        if entry is None:
            return False
        hint = EventHint.from_job_arg({**entry["hint"], "attempt": 0})
        now = now_ms()
        job_id = layout.event_dlq_retry_job_id(layout.event_job_id(hint.source, hint.event_id), now)
        job = arq_job_bytes(layout.PROCESS_EVENT, hint.to_job_args(), now)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(layout.arq_job_key(job_id), job, px=layout.ARQ_EXPIRES_EXTRA_MS, nx=True)
            pipe.zadd(self._queue, {job_id: now})
            pipe.hdel(ENTRIES_KEY, entry_id)
            pipe.zrem(INDEX_KEY, entry_id)
            await pipe.execute()
        return True

    async def retry_since(self, since: float | None, limit: int = 10_000) -> list[str]:
        """Retry every entry dead-lettered at or after ``since``; the ids retried."""
        retried = []
        for entry in await self.entries(limit=limit, since=since):
            if await self.retry(entry["id"]):
                retried.append(str(entry["id"]))
        return retried
