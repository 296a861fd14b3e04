"""EventDeadLetters keeps an entry for the operator TTL: older entries go when one is added."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.store.dead_letters import INDEX_KEY, EventDeadLetters
from service.store.layout import event_job_id


async def test_entries_older_than_the_ttl_are_dropped_on_add(redis: aioredis.Redis) -> None:
    """Adding an entry drops those dead-lettered more than ttl_s ago, and keeps younger ones."""
    store = EventDeadLetters(redis, ttl_s=3600)
    old = EventHint("kartapay", "evt_old", "pay_1", 1)
    young = EventHint("kartapay", "evt_young", "pay_2", 1)
    await store.add(old, "not_found", "404")
    await store.add(young, "not_found", "404")
    old_id, young_id = event_job_id("kartapay", "evt_old"), event_job_id("kartapay", "evt_young")
    await redis.zadd(INDEX_KEY, {old_id: time.time() - 3601, young_id: time.time() - 3000})
    await store.add(EventHint("kartapay", "evt_new", "pay_3", 1), "not_found", "404")
    ids = {entry["id"] for entry in await store.entries()}
    assert ids == {young_id, event_job_id("kartapay", "evt_new")}
    assert await store.get(old_id) is None
    assert await store.count() == 2
