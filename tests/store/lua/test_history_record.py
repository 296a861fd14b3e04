"""``history_record.lua``, run through ``HistoryStore.record_run``: a payment's runs are packed
into one field of the timelines hash (read back as written), a new payment is pushed on the
payments list, runs per payment and payments are capped, payments first seen longer ago than
the TTL leave, the event's key is left alone (its record names the payment), and inbound
events (not convergence checks, not retries) are counted per minute."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.store.compression import compress
from service.store.events import archive_record
from service.store.history import HistoryStore, Run
from service.store.layout import (
    HISTORY_PAYMENTS,
    HISTORY_TIMELINES,
    event_key,
    history_rate_key,
)
from tests.store.lua.keyspace import NO_TTL, assert_keyspace, ttl_s

NOW = 1_800_000_000_000
MINUTE = NOW // 60_000
RATE = {history_rate_key(MINUTE): ("hash", ttl_s(600))}
HISTORY = {HISTORY_TIMELINES: ("hash", NO_TTL), HISTORY_PAYMENTS: ("list", NO_TTL)}


def run_of(hint: EventHint, outcome: str = "processed") -> Run:
    return Run(
        hint.received_at_ms,
        hint.received_at_ms + 40,
        hint.source,
        hint.event_id,
        "captured",
        outcome,
        ("approved", "captured"),
    )


async def payments(redis: aioredis.Redis) -> list[str]:
    return [p.decode() for p in await redis.lrange(HISTORY_PAYMENTS, 0, -1)]


async def test_a_first_run_creates_the_payment_and_counts_the_event(
    redis: aioredis.Redis,
) -> None:
    """The first run of a payment: its timeline field, its list entry, this minute's count;
    no dedupe key is created (it had expired)."""
    store = HistoryStore(redis)
    hint = EventHint("kartapay", "evt_1", "pay_1", NOW - 500)
    assert await store.record_run(hint, run_of(hint), NOW) is True
    await assert_keyspace(redis, {**HISTORY, **RATE})
    assert await store.runs("pay_1") == [run_of(hint)]
    assert await payments(redis) == ["pay_1"]
    assert await store.rates(NOW) == {"kartapay": 1}


async def test_runs_are_appended_in_order_and_capped(redis: aioredis.Redis) -> None:
    """Later runs append to the same field (another source, a convergence check without event
    id, an event received before the first); only the last ``timeline_max`` are kept; retries
    and convergence checks are not counted as events."""
    store = HistoryStore(redis, timeline_max=3)
    hints = [
        EventHint("kartapay", "evt_1", "pay_1", NOW),
        EventHint("stripe", "evt_2", "pay_1", NOW + 5),
        EventHint("kartapay", "evt_3", "pay_1", NOW - 90, attempt=1),
        EventHint("convergence", "cv:pay_1:1:2", "pay_1", NOW + 60_000),
    ]
    for hint in hints:
        assert await store.record_run(hint, run_of(hint), NOW) is (hint is hints[0])
    await assert_keyspace(redis, {**HISTORY, **RATE})
    runs = await store.runs("pay_1")
    assert [(r.source, r.event_id, r.received_ms) for r in runs] == [
        ("stripe", "evt_2", NOW + 5),
        ("kartapay", "evt_3", NOW - 90),
        ("convergence", "", NOW + 60_000),
    ]
    assert runs[0] == run_of(hints[1])
    assert await payments(redis) == ["pay_1"]
    assert await store.rates(NOW) == {"kartapay": 1, "stripe": 1}


async def test_payments_beyond_the_cap_leave_with_their_timelines(redis: aioredis.Redis) -> None:
    """With a cap of two payments, a third pushes the oldest out of the list and the hash."""
    store = HistoryStore(redis, index_max=2)
    for n in range(3):
        hint = EventHint("kartapay", f"evt_{n}", f"pay_{n}", NOW + n)
        await store.record_run(hint, run_of(hint), NOW + n)
    await assert_keyspace(redis, {**HISTORY, **RATE})
    assert await payments(redis) == ["pay_2", "pay_1"]
    assert sorted(await redis.hkeys(HISTORY_TIMELINES)) == [b"pay_1", b"pay_2"]
    assert await store.page_payments(None, 10) == ["pay_2", "pay_1"]
    assert await store.page_payments("pay_2", 10) == ["pay_1"]
    assert await store.page_payments("pay_0", 10) == []


async def test_payments_first_seen_before_the_ttl_leave(redis: aioredis.Redis) -> None:
    """A payment first seen longer ago than the TTL leaves at the next write."""
    store = HistoryStore(redis, ttl_s=60)
    old = EventHint("kartapay", "evt_old", "pay_old", NOW)
    await store.record_run(old, run_of(old), NOW)
    late_ms = NOW + 61_000
    late = EventHint("kartapay", "evt_new", "pay_new", late_ms)
    await store.record_run(late, run_of(late), late_ms)
    await assert_keyspace(
        redis,
        {**HISTORY, **RATE, history_rate_key(late_ms // 60_000): ("hash", ttl_s(600))},
    )
    assert await payments(redis) == ["pay_new"]
    assert await redis.hkeys(HISTORY_TIMELINES) == [b"pay_new"]


async def test_event_key_left_alone_and_its_payment_read_from_its_record(
    redis: aioredis.Redis,
) -> None:
    """A run leaves the event's key as ingestion wrote it (value and TTL); the event's payment
    is read from the archived record in it."""
    store = HistoryStore(redis)
    key = event_key("kartapay", "evt_kept")
    value = compress(archive_record("kartapay", "evt_kept", NOW, {}, b"{}", payment_id="pay_1"))
    await redis.set(key, value, ex=500)
    hint = EventHint("kartapay", "evt_kept", "pay_1", NOW)
    await store.record_run(hint, run_of(hint), NOW)
    await assert_keyspace(redis, {**HISTORY, **RATE, key: ("string", ttl_s(500))})
    assert await redis.get(key) == value
    assert await store.event_payment("kartapay", "evt_kept") == "pay_1"
    assert await store.event_payment("kartapay", "evt_unknown") is None
