"""Dead-lettered events: hints that processing gave up on, kept for listing, inspection and retry.

Keys: ``kh:dlq:events`` (hash: id → JSON entry) and ``kh:dlq:events:index`` (sorted set: id by
time dead-lettered).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
from redis.asyncio import Redis

from service.jobs import KEY_PREFIX, PROCESS_EVENT, EventHint

ENTRIES_KEY = f"{KEY_PREFIX}dlq:events"
INDEX_KEY = f"{KEY_PREFIX}dlq:events:index"


class EventDeadLetters:
    """The store of dead-lettered events."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def add(self, hint: EventHint, reason: str, last_error: str) -> None:
        now = time.time()
        entry = {
            "id": hint.job_id,
            "hint": asdict(hint),
            "reason": reason,
            "last_error": last_error,
            "dead_at": now,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(ENTRIES_KEY, hint.job_id, orjson.dumps(entry).decode())
            pipe.zadd(INDEX_KEY, {hint.job_id: now})
            await pipe.execute()

    async def count(self) -> int:
        return int(await self._redis.zcard(INDEX_KEY))

    async def list(self, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
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

    async def retry(self, entry_id: str, enqueue: Any) -> bool:
        """Enqueue a fresh ``process_event`` for an entry, then remove the entry.

        ``enqueue`` is an arq ``ArqRedis.enqueue_job``. A crash between the two leaves the entry
        in place and a job queued; processing is idempotent, so a second retry is harmless.
        """
        entry = await self.get(entry_id)
        if entry is None:
            return False
        hint = EventHint.from_job_arg({**entry["hint"], "attempt": 0})
        job_id = f"{hint.job_id}:dlq{int(time.time() * 1000)}"
        await enqueue(PROCESS_EVENT, hint.to_job_args()[0], _job_id=job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(ENTRIES_KEY, entry_id)
            pipe.zrem(INDEX_KEY, entry_id)
            await pipe.execute()
        return True
