"""KEEP_UNROUTABLE, run through ``EventStore.keep_unroutable``: an authentic event without a
payment id goes onto one capped list, newest first, and nothing else is written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from service.store.events import UNROUTABLE_KEY, EventStore
from tests.store.lua.keyspace import NO_TTL, assert_keyspace
from tests.store.lua.staging import QUEUE, RECEIVED_MS

HEADERS = {"content-type": "application/json", "authorization": "Bearer secret-token"}


@pytest.fixture
async def store(redis: aioredis.Redis) -> AsyncIterator[EventStore]:
    events = EventStore(
        redis, queue_name=QUEUE, dedupe_ttl_s=60, raw_ttl_s=60, timeout_s=5, unroutable_cap=3
    )
    try:
        yield events
    finally:
        await events.close()


async def kept_ids(redis: aioredis.Redis) -> list[str]:
    rows: list[bytes] = await redis.lrange(UNROUTABLE_KEY, 0, -1)  # type: ignore[misc]
    return [orjson.loads(row)["event_id"] for row in rows]


async def keep(store: EventStore, event_id: str) -> None:
    await store.keep_unroutable("kartapay", event_id, RECEIVED_MS, HEADERS, b'{"a": 1}')


async def test_first_unroutable_event_creates_the_list(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """The first unroutable event creates the list (no TTL: capped instead) and nothing else."""
    await keep(store, "evt_1")
    await assert_keyspace(redis, {UNROUTABLE_KEY: ("list", NO_TTL)})
    rows: list[bytes] = await redis.lrange(UNROUTABLE_KEY, 0, -1)  # type: ignore[misc]
    assert [orjson.loads(row) for row in rows] == [
        {
            "source": "kartapay",
            "event_id": "evt_1",
            "received_at_ms": RECEIVED_MS,
            "headers": {"content-type": "application/json"},
            "body": '{"a": 1}',
        }
    ]


async def test_unroutable_events_are_kept_newest_first(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """Events under the cap are all kept, newest first, in the one list."""
    for event_id in ("evt_1", "evt_2", "evt_3"):
        await keep(store, event_id)
    await assert_keyspace(redis, {UNROUTABLE_KEY: ("list", NO_TTL)})
    assert await kept_ids(redis) == ["evt_3", "evt_2", "evt_1"]


async def test_list_is_trimmed_to_the_cap(redis: aioredis.Redis, store: EventStore) -> None:
    """Past the cap the oldest events are dropped: the list keeps the newest ``cap``."""
    for n in range(1, 6):
        await keep(store, f"evt_{n}")
    await assert_keyspace(redis, {UNROUTABLE_KEY: ("list", NO_TTL)})
    assert await kept_ids(redis) == ["evt_5", "evt_4", "evt_3"]


async def test_cap_of_one_keeps_only_the_newest(redis: aioredis.Redis) -> None:
    """With a cap of one the list holds just the latest event."""
    store = EventStore(
        redis, queue_name=QUEUE, dedupe_ttl_s=60, raw_ttl_s=60, timeout_s=5, unroutable_cap=1
    )
    try:
        await keep(store, "evt_1")
        await keep(store, "evt_2")
    finally:
        await store.close()
    await assert_keyspace(redis, {UNROUTABLE_KEY: ("list", NO_TTL)})
    assert await kept_ids(redis) == ["evt_2"]


async def test_unroutable_event_leaves_stored_events_alone(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """Keeping an unroutable event touches no other key (the queue stays as it was)."""
    await redis.zadd(QUEUE, {"evt:other": 1})
    await keep(store, "evt_1")
    await assert_keyspace(redis, {UNROUTABLE_KEY: ("list", NO_TTL), QUEUE: ("zset", NO_TTL)})
    assert await redis.zcard(QUEUE) == 1
