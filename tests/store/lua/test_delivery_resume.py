"""The resumption after a crash, run through ``FanoutStore.resume``: the deferred safety-net job
of each attempt in flight is made due when its slot's lease ends (at once when it lapsed);
nothing else changes."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.delivery_state import FanoutStore
from service.store.layout import inflight_key
from tests.store.lua.keyspace import NO_TTL, assert_keyspace, server_ms, zset
from tests.store.lua.staging import OTHER_SUB, QUEUE, SUB

HOLD_MS = 22_000
LAPSED, LIVE, RUNNING, UNQUEUED = "fdl:a:1", "fdl:b:1", "fdl:c:1", "fdl:d:1"


async def test_safety_jobs_become_due_when_their_slot_lease_ends(redis: aioredis.Redis) -> None:
    """A lapsed slot's job is due now, a live one's at its lease end; a due job, a slot with no
    job and another subscriber's slots are left alone."""
    now = await server_ms(redis)
    await redis.zadd(
        inflight_key(SUB),
        {LAPSED: now - 1, LIVE: now + 3_000, RUNNING: now + 3_000, UNQUEUED: now + 3_000},
    )
    other = "fdl:other:1"
    await redis.zadd(inflight_key(OTHER_SUB), {other: now - 1})
    await redis.zadd(
        QUEUE,
        {LAPSED: now + HOLD_MS, LIVE: now + HOLD_MS, RUNNING: now - 500, other: now + HOLD_MS},
    )
    moved = await FanoutStore(redis, QUEUE).resume([SUB], now)
    assert moved == 2
    await assert_keyspace(
        redis,
        {
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            inflight_key(OTHER_SUB): ("zset", NO_TTL),
        },
    )
    assert await zset(redis, QUEUE) == {
        LAPSED: now,
        LIVE: now + 3_000,
        RUNNING: now - 500,
        other: now + HOLD_MS,
    }
    assert len(await zset(redis, inflight_key(SUB))) == 4


async def test_resume_of_no_subscribers_or_empty_slots_changes_nothing(
    redis: aioredis.Redis,
) -> None:
    """With no subscribers, or none in flight, nothing is moved and no key is written."""
    now = await server_ms(redis)
    await redis.zadd(QUEUE, {LAPSED: now + HOLD_MS})
    store = FanoutStore(redis, QUEUE)
    assert await store.resume([], now) == 0
    assert await store.resume([SUB], now) == 0
    await assert_keyspace(redis, {QUEUE: ("zset", NO_TTL)})
    assert await zset(redis, QUEUE) == {LAPSED: now + HOLD_MS}
