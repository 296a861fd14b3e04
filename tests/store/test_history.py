"""The history store's writes: one packed run per processing run, capped and expiring; the
payments index capped and aged out; the event's payment noted on its dedupe key only while the
dedupe key lives."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.store.history import HistoryStore, Run
from service.store.layout import HISTORY_PAYMENTS, dedupe_key, history_timeline_key

NOW = 1_800_000_000_000


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


async def test_runs_round_trip_and_the_timeline_is_capped_with_a_ttl(
    redis: aioredis.Redis,
) -> None:
    """Runs read back as written (convergence checks without an event id), oldest first; only
    the last ``timeline_max`` are kept, and the timeline expires ``ttl_s`` after the last."""
    store = HistoryStore(redis, ttl_s=600, timeline_max=3, index_max=10)
    hints = [EventHint("kartapay", f"evt_{n}", "pay_1", NOW + n) for n in range(4)]
    for hint in hints:
        await store.record_run(hint, run_of(hint), NOW + 100)
    check = EventHint("convergence", "cv:pay_1:1:2", "pay_1", NOW + 9)
    await store.record_run(check, run_of(check, "retry"), NOW + 200)
    runs = await store.runs("pay_1")
    assert [r.event_id for r in runs] == ["evt_2", "evt_3", ""]
    assert runs[0] == run_of(hints[2])
    assert (runs[-1].source, runs[-1].outcome, runs[-1].fetched) == (
        "convergence",
        "retry",
        "captured",
    )
    assert 590 <= await redis.ttl(history_timeline_key("pay_1")) <= 600


async def test_index_is_capped_and_aged_out(redis: aioredis.Redis) -> None:
    """The payments index keeps the ``index_max`` most recent payments, none older than the
    TTL, newest first."""
    store = HistoryStore(redis, ttl_s=60, timeline_max=3, index_max=2)
    for n, at in enumerate([NOW, NOW + 1_000, NOW + 2_000]):
        hint = EventHint("kartapay", f"evt_{n}", f"pay_{n}", at)
        await store.record_run(hint, run_of(hint), at)
    assert await redis.zcard(HISTORY_PAYMENTS) == 2
    page = await store.page_payments(None, None, 10)
    assert [p.payment_id for p in page] == ["pay_2", "pay_1"]
    late = EventHint("kartapay", "evt_late", "pay_9", NOW + 120_000)
    await store.record_run(late, run_of(late), NOW + 120_000)
    assert [p.payment_id for p in await store.page_payments(None, None, 10)] == ["pay_9"]


async def test_payment_noted_on_the_dedupe_key_only_while_it_lives(
    redis: aioredis.Redis,
) -> None:
    """The event's payment replaces its dedupe key's value (same TTL); no dedupe key is
    created for an event whose key has expired."""
    store = HistoryStore(redis)
    kept = EventHint("kartapay", "evt_kept", "pay_1", NOW)
    await redis.set(dedupe_key("kartapay", "evt_kept"), "evt:job", ex=500)
    await store.record_run(kept, run_of(kept), NOW)
    assert await store.event_payment("kartapay", "evt_kept") == "pay_1"
    assert 490 <= await redis.ttl(dedupe_key("kartapay", "evt_kept")) <= 500
    gone = EventHint("kartapay", "evt_gone", "pay_1", NOW)
    await store.record_run(gone, run_of(gone), NOW)
    assert not await redis.exists(dedupe_key("kartapay", "evt_gone"))
