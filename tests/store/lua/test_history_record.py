"""``history_record.lua``, run through ``HistoryStore.record_run``: a payment's runs are short
fields of its state hash (read back as written, the usual event ids packed), beside the state's
own fields and TTL (history's TTL when it made the hash); a new payment is pushed on the payments
list, runs per payment and payments are capped, payments first seen longer ago than the TTL
leave (their fields too), the payment's event hash is left alone (read by payment), and
inbound events (not convergence checks, not retries) are counted per minute."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.store.batcher import RedisUnavailable, ScriptBatcher
from service.store.compression import compress
from service.store.events import archive_record
from service.store.history import HistoryStore, Run
from service.store.jobs import arq_job_bytes
from service.store.layout import (
    HISTORY_PAYMENTS,
    PROCESS_EVENT,
    arq_job_key,
    event_field,
    event_job_id,
    event_key,
    history_rate_key,
    payment_state_key,
)
from tests.store.lua.keyspace import NO_TTL, Expected, assert_keyspace, hash_of, ttl_s

NOW = 1_800_000_000_000
MINUTE = NOW // 60_000
TTL_S = 7 * 86_400
RATE = {history_rate_key(MINUTE): ("hash", ttl_s(600))}
LIST = {HISTORY_PAYMENTS: ("list", NO_TTL)}
EVENT_ID = "evt_" + "0a1f" * 6  # KartaPay's shape: packed to 17 bytes


def timeline(*payment_ids: str) -> Expected:
    """The state hashes history made (no state recorded), with history's TTL."""
    return {payment_state_key(pid): ("hash", ttl_s(TTL_S)) for pid in payment_ids}


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
    """The first run of a payment without a state yet: a header and a run field in a state hash
    with history's TTL, its list entry, this minute's count; the event id is packed (a field
    well under 64 bytes) and read back as it was."""
    store = HistoryStore(redis)
    hint = EventHint("kartapay", EVENT_ID, "pay_1", NOW - 500)
    assert await store.record_run(hint, run_of(hint), NOW) is True
    await assert_keyspace(redis, {**timeline("pay_1"), **LIST, **RATE})
    assert await store.runs("pay_1") == [run_of(hint)]
    stored = await redis.hget(payment_state_key("pay_1"), "r0")  # type: ignore[misc]
    assert stored is not None and EVENT_ID.encode() not in stored and len(stored) < 40
    assert await payments(redis) == ["pay_1"]
    assert await store.rates(NOW) == {"kartapay": 1}


async def test_runs_join_a_recorded_state_and_keep_its_ttl(redis: aioredis.Redis) -> None:
    """A payment whose state is recorded: its runs are added to the state hash, whose own
    fields and TTL are left as they were."""
    key = payment_state_key("pay_1")
    await redis.hset(key, mapping={"seq": "3", "status": "captured", "ledger:1": "d,1,200"})  # type: ignore[misc]
    await redis.expire(key, 500)
    store = HistoryStore(redis)
    hint = EventHint("kartapay", "evt_plain", "pay_1", NOW)
    await store.record_run(hint, run_of(hint), NOW)
    await assert_keyspace(redis, {key: ("hash", ttl_s(500)), **LIST, **RATE})
    fields = await hash_of(redis, key)
    assert {k: fields[k] for k in ("seq", "status", "ledger:1")} == {
        "seq": "3",
        "status": "captured",
        "ledger:1": "d,1,200",
    }
    assert sorted(fields) == ["h", "ledger:1", "r0", "seq", "status"]
    assert await store.runs("pay_1") == [run_of(hint)]


async def test_runs_are_appended_in_order_and_capped(redis: aioredis.Redis) -> None:
    """Later runs add fields (another source, a convergence check without event id, an event
    received before the first); only the last ``timeline_max`` are kept; retries and
    convergence checks are not counted as events."""
    store = HistoryStore(redis, timeline_max=3)
    hints = [
        EventHint("kartapay", "evt_1", "pay_1", NOW),
        EventHint("stripe", "evt_2", "pay_1", NOW + 5),
        EventHint("kartapay", "evt_3", "pay_1", NOW - 90, attempt=1),
        EventHint("convergence", "cv:pay_1:1:2", "pay_1", NOW + 60_000),
    ]
    for hint in hints:
        assert await store.record_run(hint, run_of(hint), NOW) is (hint is hints[0])
    await assert_keyspace(redis, {**timeline("pay_1"), **LIST, **RATE})
    runs = await store.runs("pay_1")
    assert [(r.source, r.event_id, r.received_ms) for r in runs] == [
        ("stripe", "evt_2", NOW + 5),
        ("kartapay", "evt_3", NOW - 90),
        ("convergence", "", NOW + 60_000),
    ]
    assert runs[0] == run_of(hints[1])
    assert sorted(await redis.hkeys(payment_state_key("pay_1"))) == [b"h", b"r1", b"r2", b"r3"]  # type: ignore[misc]
    assert await payments(redis) == ["pay_1"]
    assert await store.rates(NOW) == {"kartapay": 1, "stripe": 1}


async def test_payments_beyond_the_cap_leave_with_their_timelines(redis: aioredis.Redis) -> None:
    """With a cap of two payments, a third pushes the oldest out of the list, and its timeline
    fields out of its state hash."""
    store = HistoryStore(redis, index_max=2)
    for n in range(3):
        hint = EventHint("kartapay", f"evt_{n}", f"pay_{n}", NOW + n)
        await store.record_run(hint, run_of(hint), NOW + n)
    await assert_keyspace(redis, {**timeline("pay_1", "pay_2"), **LIST, **RATE})
    assert await payments(redis) == ["pay_2", "pay_1"]
    assert await store.runs("pay_0") == []
    assert await store.page_payments(None, 10) == ["pay_2", "pay_1"]
    assert await store.page_payments("pay_2", 10) == ["pay_1"]
    assert await store.page_payments("pay_0", 10) == []


async def test_payments_first_seen_before_the_ttl_leave(redis: aioredis.Redis) -> None:
    """A payment first seen longer ago than the TTL leaves at the next write, with its fields."""
    store = HistoryStore(redis, ttl_s=60)
    old = EventHint("kartapay", "evt_old", "pay_old", NOW)
    await store.record_run(old, run_of(old), NOW)
    late_ms = NOW + 61_000
    late = EventHint("kartapay", "evt_new", "pay_new", late_ms)
    await store.record_run(late, run_of(late), late_ms)
    await assert_keyspace(
        redis,
        {
            payment_state_key("pay_new"): ("hash", ttl_s(60)),
            **LIST,
            **RATE,
            history_rate_key(late_ms // 60_000): ("hash", ttl_s(600)),
        },
    )
    assert await payments(redis) == ["pay_new"]


async def test_event_hash_left_alone_and_the_event_read_from_its_payments_hash(
    redis: aioredis.Redis,
) -> None:
    """A run leaves the payment's event hash as ingestion wrote it (value and TTL); the event's
    archived record is read from it by payment, and its payment from its job only while the job
    is queued."""
    store = HistoryStore(redis)
    key, field = event_key("pay_1"), event_field("kartapay", "evt_kept")
    value = compress(archive_record("kartapay", "evt_kept", NOW, {}, b"{}"))
    await redis.hset(key, field, value)  # type: ignore[misc]
    await redis.expire(key, 500)
    hint = EventHint("kartapay", "evt_kept", "pay_1", NOW)
    await store.record_run(hint, run_of(hint), NOW)
    await assert_keyspace(redis, {**timeline("pay_1"), **LIST, **RATE, key: ("hash", ttl_s(500))})
    assert await redis.hget(key, field) == value  # type: ignore[misc]
    record = await store.raw_event("kartapay", "evt_kept", "pay_1")
    assert record is not None and record["payment_id"] == "pay_1" and record["body"] == "{}"
    assert await store.raw_event("kartapay", "evt_kept", "pay_2") is None
    assert await store.raw_event("kartapay", "evt_unknown", "pay_1") is None
    assert await store.event_payment("kartapay", "evt_kept") is None  # its job is not queued
    job = arq_job_bytes(PROCESS_EVENT, hint.to_job_args(), NOW)
    await redis.set(arq_job_key(event_job_id("kartapay", "evt_kept")), job, ex=500)
    assert await store.event_payment("kartapay", "evt_kept") == "pay_1"
    assert await store.event_payment("kartapay", "evt_unknown") is None


async def test_concurrent_runs_through_the_batcher_land_as_direct_calls_do(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """The worker's records go through a ScriptBatcher (one pipelined write for concurrent
    runs): twenty at once are all recorded, each read back, the keyspace the same as direct
    calls make; and after the batcher is closed a record fails with RedisUnavailable (the
    processing job logs it and goes on), writing nothing."""
    client = aioredis.from_url(redis_url)
    batcher = ScriptBatcher(client, timeout_s=5.0)
    store = HistoryStore(redis, batcher=batcher)
    hints = [EventHint("kartapay", f"evt_{n:04d}", f"pay_{n}", NOW - 500) for n in range(20)]
    try:
        news = await asyncio.gather(*(store.record_run(h, run_of(h), NOW) for h in hints))
        assert news == [True] * 20
        pids = [h.payment_id for h in hints]
        await assert_keyspace(redis, {**timeline(*pids), **LIST, **RATE})
        for hint in hints:
            assert await store.runs(hint.payment_id) == [run_of(hint)]
        assert sorted(await payments(redis)) == sorted(pids)
    finally:
        await batcher.close()
        await client.aclose()
    late = EventHint("kartapay", "evt_late", "pay_late", NOW - 500)
    with pytest.raises(RedisUnavailable):
        await store.record_run(late, run_of(late), NOW)
    assert not await redis.exists(payment_state_key("pay_late"))
