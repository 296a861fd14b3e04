"""EventProcessor against a real Redis, with an in-process payment reader for the edge cases a
real API cannot produce on demand (a fetch held open while other hints arrive)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from service.domain.events import EventHint, transition_id
from service.kartapay import errors
from service.kartapay.models import Payment, PaymentRecord
from service.store.dead_letters import EventDeadLetters
from service.store.layout import (
    ARQ_JOB_PREFIX,
    deliver_job_id,
    delivery_key,
    inflight_key,
    payment_dirty_key,
    payment_lock_key,
    waiting_key,
    wake_job_id,
)
from service.store.leases import Leases
from service.store.payments import TRANSITIONS_LOG_KEY, PaymentStateStore
from service.store.subscribers import Subscriber, SubscriberCache, SubscriberStore
from workers.processing.processor import EventProcessor, InlineDelivery
from workers.processing.retry_policy import FetchRetryPolicy

QUEUE = "arq:queue"
COMPLETED: dict[str, Any] = {
    "status": "completed",
    "purchase": {"total": {"value": "10", "currency": "EUR"}},
    "createdAt": "2026-01-01T00:00:00.000Z",
    "submittedAt": "2026-01-01T00:00:01.000Z",
    "approvedAt": "2026-01-01T00:00:02.000Z",
    "capturedAt": "2026-01-01T00:00:03.000Z",
    "completedAt": "2026-01-01T00:00:04.000Z",
}


class HeldReader:
    """Answers GETs with a fixed payment; the first GET waits until released."""

    def __init__(self, payment: dict[str, Any]) -> None:
        self.payment = payment
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, payment_id: str) -> PaymentRecord:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            await self.release.wait()
        return PaymentRecord(payment_id, Payment.model_validate(self.payment))


class FailingReader:
    """Raises the given error on every GET."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def get(self, payment_id: str) -> PaymentRecord:
        raise self.exc


def hint(n: int, payment_id: str = "pay_1", attempt: int = 0) -> EventHint:
    return EventHint("kartapay", f"evt_{n}", payment_id, int(time.time() * 1000), attempt)


def make_processor(
    redis: aioredis.Redis,
    reader: Any,
    scheduled: list[tuple[EventHint, float]],
    inline: bool = False,
    leases: Leases | None = None,
) -> EventProcessor:
    async def schedule(h: EventHint, delay: float) -> None:
        scheduled.append((h, delay))

    policy = FetchRetryPolicy(base_s=0.5, cap_s=10, max_age_s=60, not_found_tries=3)
    store = PaymentStateStore(redis, QUEUE, lock_ttl_ms=30_000)
    return EventProcessor(
        store,
        reader,
        SubscriberCache(redis),
        EventDeadLetters(redis),
        schedule,
        policy,
        timeout_s=5,
        inline=InlineDelivery(enabled=inline, lease_ms=30_000),
        leases=leases,
    )


def released(payment: dict[str, Any]) -> HeldReader:
    reader = HeldReader(payment)
    reader.release.set()
    return reader


STEPS = ("submitted", "approved", "captured", "completed")


async def test_burst_of_hints_coalesces_into_two_fetches(redis: aioredis.Redis) -> None:
    """20 hints during one held fetch cost exactly one more fetch, and emit each step once."""
    reader = HeldReader(COMPLETED)
    processor = make_processor(redis, reader, [])
    first = asyncio.create_task(processor.handle(hint(0), "job-0"))
    await reader.entered.wait()
    others = await asyncio.gather(*(processor.handle(hint(n), f"job-{n}") for n in range(1, 20)))
    assert {o.outcome for o in others} == {"coalesced"}
    reader.release.set()
    outcome = await first
    assert outcome.outcome == "processed"
    assert outcome.fetches == 2
    assert reader.calls == 2
    assert outcome.emitted == ("submitted", "approved", "captured", "completed")
    log = await redis.xrange(TRANSITIONS_LOG_KEY)
    assert [entry[b"status"] for _, entry in log] == [
        b"submitted",
        b"approved",
        b"captured",
        b"completed",
    ]
    assert await redis.zcard(QUEUE) == 0  # nobody subscribed: no delivery, no job


async def test_deliveries_are_created_with_the_transitions_first_one_queued(
    redis: aioredis.Redis,
) -> None:
    """Recording a completed payment creates a delivery per step for each subscriber that wants
    it, and queues (due now) only the first of each subscriber's line."""
    store = SubscriberStore(redis)
    await store.put(Subscriber(id="all", url="http://127.0.0.1:1/hook"))
    await store.put(Subscriber(id="caps", url="http://127.0.0.1:1/hook", events=["payment.capt*"]))
    await store.put(Subscriber(id="off", url="http://127.0.0.1:1/hook", enabled=False))
    outcome = await make_processor(redis, released(COMPLETED), []).handle(hint(1), "a")
    assert outcome.emitted == STEPS
    assert outcome.deliveries == ()  # not asked to send inline
    ids = {status: transition_id("pay_1", status) for status in STEPS}
    for status in STEPS:
        assert await redis.hget(delivery_key("all", ids[status]), "state") == (
            b"active" if status == "submitted" else b"queued"
        )
        expected = b"active" if status == "captured" else None
        assert await redis.hget(delivery_key("caps", ids[status]), "state") == expected
        assert not await redis.exists(delivery_key("off", ids[status]))
    queued = await redis.zrange(QUEUE, 0, -1, withscores=True)
    assert sorted(j.decode() for j, _ in queued) == [
        f"fdl:all:{ids['submitted']}:1",
        f"fdl:caps:{ids['captured']}:1",
    ]
    now_ms = time.time() * 1000
    for job_id, score in queued:
        assert await redis.exists(ARQ_JOB_PREFIX + job_id.decode())
        assert score <= now_ms


async def test_inline_run_starts_the_heads_and_their_jobs_wait_the_hold(
    redis: aioredis.Redis,
) -> None:
    """Asked to send inline, the run starts the first delivery of each line (slot taken, with
    its transition), and its queued job (the safety net) is deferred by the lease."""
    await SubscriberStore(redis).put(Subscriber(id="all", url="http://127.0.0.1:1/hook"))
    processor = make_processor(redis, released(COMPLETED), [], inline=True)
    outcome = await processor.handle(hint(1), "a", inline_until=time.monotonic() + 60)
    head = f"fdl:all:{transition_id('pay_1', 'submitted')}:1"
    [started] = outcome.deliveries
    assert (started.job_id, started.attempts) == (head, 0)
    assert started.body is not None and b'"type":"payment.submitted"' in started.body
    assert (started.payment_id, started.event_type) == ("pay_1", "payment.submitted")
    assert await redis.zscore(inflight_key("all"), head) is not None
    score = await redis.zscore(QUEUE, head)
    assert score is not None and score >= time.time() * 1000 + 25_000


async def test_inline_run_past_its_window_leaves_the_heads_to_their_jobs(
    redis: aioredis.Redis,
) -> None:
    """A run whose window for sending has passed starts nothing: the heads' jobs are due now."""
    await SubscriberStore(redis).put(Subscriber(id="all", url="http://127.0.0.1:1/hook"))
    processor = make_processor(redis, released(COMPLETED), [], inline=True)
    outcome = await processor.handle(hint(1), "a", inline_until=time.monotonic() - 1)
    assert outcome.deliveries == ()
    head = f"fdl:all:{transition_id('pay_1', 'submitted')}:1"
    score = await redis.zscore(QUEUE, head)
    assert score is not None and score <= time.time() * 1000
    assert await redis.zcard(inflight_key("all")) == 0


async def test_inline_run_over_the_cap_parks_the_head_instead(redis: aioredis.Redis) -> None:
    """A head that finds its subscriber's slots all taken is parked (not started) with no job
    of its own: only the subscriber's recheck wake job, due after the lease, stays queued."""
    store = SubscriberStore(redis)
    await store.put(Subscriber(id="one", url="http://127.0.0.1:1/hook", concurrency=1))
    await redis.zadd(
        inflight_key("one"), {deliver_job_id("one", "other", 1): time.time() * 1000 + 60_000}
    )
    processor = make_processor(redis, released(COMPLETED), [], inline=True)
    outcome = await processor.handle(hint(1), "a", inline_until=time.monotonic() + 60)
    assert outcome.deliveries == ()
    tid = transition_id("pay_1", "submitted")
    [(recheck, at)] = await redis.zrange(QUEUE, 0, -1, withscores=True)
    assert recheck.decode() == wake_job_id("one", int(at))
    assert await redis.zrange(waiting_key("one"), 0, -1) == [tid.encode()]
    assert not await redis.exists(ARQ_JOB_PREFIX + deliver_job_id("one", tid, 1))


async def test_a_subscriber_added_after_the_cache_was_read_still_gets_its_deliveries(
    redis: aioredis.Redis,
) -> None:
    """The compare-and-set refuses a stale subscriber list; the run reloads it and matches
    again, so a subscriber added a moment ago is not missed."""
    store = SubscriberStore(redis)
    await store.put(Subscriber(id="early", url="http://127.0.0.1:1/hook"))
    processor = make_processor(redis, released(COMPLETED), [])
    await processor._subscribers.refresh()
    await store.put(Subscriber(id="late", url="http://127.0.0.1:1/hook"))
    outcome = await processor.handle(hint(1), "a")
    assert outcome.emitted == STEPS
    for sub in ("early", "late"):
        key = delivery_key(sub, transition_id("pay_1", "completed"))
        assert await redis.hget(key, "state") == b"queued"


async def test_stale_state_emits_nothing(redis: aioredis.Redis) -> None:
    """Once completed is recorded, a fetch showing an older state emits nothing."""
    processor = make_processor(redis, HeldReader(COMPLETED), [])
    reader: Any = processor._reader
    reader.release.set()
    assert (await processor.handle(hint(1), "a")).emitted == (
        "submitted",
        "approved",
        "captured",
        "completed",
    )
    older = {**COMPLETED, "status": "approved", "capturedAt": None, "completedAt": None}
    reader.payment = older
    outcome = await processor.handle(hint(2), "b")
    assert outcome.outcome == "processed"
    assert outcome.emitted == ()
    assert await redis.xlen(TRANSITIONS_LOG_KEY) == 4


async def test_rate_limit_retry_honours_retry_after(redis: aioredis.Redis) -> None:
    """A 429 schedules the next try no sooner than Retry-After, and frees the fetch lock."""
    scheduled: list[tuple[EventHint, float]] = []
    exc = errors.RateLimitedError(429, retry_after=7.0)
    processor = make_processor(redis, FailingReader(exc), scheduled)
    outcome = await processor.handle(hint(1), "a")
    assert outcome.outcome == "retry"
    assert scheduled[0][0].attempt == 1
    assert scheduled[0][1] >= 7.0
    assert await processor._store.acquire("pay_1", "someone-else")


async def test_not_found_is_dead_lettered_after_configured_tries(redis: aioredis.Redis) -> None:
    """404 retries until the configured number of tries, then dead-letters with the reason."""
    scheduled: list[tuple[EventHint, float]] = []
    processor = make_processor(redis, FailingReader(errors.NotFoundError(404)), scheduled)
    assert (await processor.handle(hint(1, attempt=0), "a")).outcome == "retry"
    assert (await processor.handle(hint(1, attempt=1), "b")).outcome == "retry"
    outcome = await processor.handle(hint(1, attempt=2), "c")
    assert outcome.outcome == "dead_lettered"
    entries = await EventDeadLetters(redis).entries()
    assert [(e["reason"], e["hint"]["event_id"]) for e in entries] == [("not_found", "evt_1")]


async def test_auth_failure_is_retried_even_past_max_age(redis: aioredis.Redis) -> None:
    """401 never dead-letters, however old the hint; it logs an error-level alert."""
    from structlog.testing import capture_logs

    scheduled: list[tuple[EventHint, float]] = []
    processor = make_processor(redis, FailingReader(errors.UnauthorizedError(401)), scheduled)
    old = EventHint("kartapay", "evt_old", "pay_1", int((time.time() - 3600) * 1000), 50)
    with capture_logs() as logs:
        outcome = await processor.handle(old, "a")
    assert outcome.outcome == "retry"
    assert await EventDeadLetters(redis).count() == 0
    assert any(e["log_level"] == "error" and e["event"] == "kartapay_auth_failed" for e in logs)


async def test_server_errors_dead_letter_past_max_age(redis: aioredis.Redis) -> None:
    """A 5xx on a hint older than the maximum age dead-letters it instead of retrying."""
    processor = make_processor(redis, FailingReader(errors.ServerError(503)), [])
    old = EventHint("kartapay", "evt_old", "pay_1", int((time.time() - 120) * 1000), 9)
    outcome = await processor.handle(old, "a")
    assert (outcome.outcome, outcome.reason) == ("dead_lettered", "max_age_exceeded")


async def test_run_whose_lock_lease_was_lost_fetches_no_more(redis: aioredis.Redis) -> None:
    """A run whose fetch lock lapsed while it fetched (seen by a renewal) and was taken back by
    a rerun of its job (same token) stops: no second fetch, outcome ``lease_lost``."""
    reader = HeldReader(COMPLETED)
    leases = Leases(redis, QUEUE, 30_000)
    processor = make_processor(redis, reader, [], leases=leases)
    run = asyncio.create_task(processor.handle(hint(0), "job-0"))
    await reader.entered.wait()
    await redis.delete(payment_lock_key("pay_1"))  # the lease lapsed: the worker stalled
    renewed = await leases.renew([], int(time.time() * 1000))
    assert len(renewed.lost) == 1
    # The job's rerun elsewhere takes the lock (same token), and a hint marks the payment dirty.
    await redis.set(payment_lock_key("pay_1"), "job-0", px=30_000)
    await redis.set(payment_dirty_key("pay_1"), "1")
    reader.release.set()
    outcome = await run
    assert (outcome.outcome, outcome.fetches, reader.calls) == ("lease_lost", 1, 1)
    assert outcome.emitted == STEPS
    assert leases.held() == []
