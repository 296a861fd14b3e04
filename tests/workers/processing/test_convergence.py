"""Processing's side of convergence against a real Redis: a convergence hint that reveals a
transition counts it in ``kartahook_convergence_transitions_total`` (a webhook's does not), a
record past the horizon logs ``payment_stuck`` and counts it, and the worker's convergence loop
queues the due checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from service.domain.events import EventHint
from service.store.converge import ConvergePlan, ConvergeStore
from service.store.dead_letters import EventDeadLetters
from service.store.layout import (
    CONVERGE,
    CONVERGENCE_SOURCE,
    STUCK,
    converge_job_id,
    payment_state_key,
)
from service.store.payments import PaymentStateStore
from service.store.subscribers import SubscriberCache
from tests.workers.processing.test_processor import COMPLETED, released
from workers import metrics
from workers.processing.converge import Converger
from workers.processing.processor import EventProcessor
from workers.processing.retry_policy import FetchRetryPolicy

QUEUE = "arq:queue"
PLAN = ConvergePlan(schedule_s=(60,), repeat_s=60, horizon_s=600)
CAPTURED = {k: v for k, v in COMPLETED.items() if k != "completedAt"} | {"status": "captured"}


def processor(redis: aioredis.Redis, payment: dict[str, Any]) -> EventProcessor:
    async def schedule(h: EventHint, delay: float) -> None:
        raise AssertionError("no retry expected")

    store = PaymentStateStore(redis, QUEUE, lock_ttl_ms=30_000, converge=PLAN)
    policy = FetchRetryPolicy(base_s=0.5, cap_s=10, max_age_s=60, not_found_tries=3)
    return EventProcessor(
        store, released(payment), SubscriberCache(redis), EventDeadLetters(redis), schedule, policy
    )


def hint(source: str, n: int = 0, pid: str = "pay_1") -> EventHint:
    return EventHint(source, f"e{n}", pid, int(time.time() * 1000))


def found(status: str) -> float:
    return metrics.CONVERGENCE_TRANSITIONS.labels(status)._value.get()


async def test_a_transition_found_by_convergence_is_counted(redis: aioredis.Redis) -> None:
    """captured recorded from a webhook is not counted; completed found by a convergence check
    is, once, and the payment leaves the schedule."""
    before_captured, before_completed = found("captured"), found("completed")
    first = await processor(redis, CAPTURED).handle(hint("kartapay"), "job-1")
    assert first.emitted == ("submitted", "approved", "captured")
    assert await redis.zscore(CONVERGE, "pay_1") is not None
    with capture_logs() as logs:
        second = await processor(redis, COMPLETED).handle(hint(CONVERGENCE_SOURCE, 1), "job-2")
    assert second.emitted == ("completed",)
    assert (found("captured"), found("completed")) == (before_captured, before_completed + 1)
    assert [e["transitions"] for e in logs if e["event"] == "convergence_found_transitions"] == [
        ["completed"]
    ]
    assert await redis.zscore(CONVERGE, "pay_1") is None


async def test_a_record_past_the_horizon_logs_payment_stuck(redis: aioredis.Redis) -> None:
    """A convergence fetch past the horizon that finds the payment still captured logs
    payment_stuck (with payment id and status) and counts it, once."""
    await processor(redis, CAPTURED).handle(hint("kartapay"), "job-1")
    await redis.hset(payment_state_key("pay_1"), "cv_first", 1)  # first seen long ago
    before = metrics.PAYMENTS_STUCK._value.get()
    with capture_logs() as logs:
        await processor(redis, CAPTURED).handle(hint(CONVERGENCE_SOURCE, 1), "job-2")
        await processor(redis, CAPTURED).handle(hint(CONVERGENCE_SOURCE, 2), "job-3")
    stuck = [e for e in logs if e["event"] == "payment_stuck"]
    assert [(e["payment_id"], e["status"], e["log_level"]) for e in stuck] == [
        ("pay_1", "captured", "warning")
    ]
    assert metrics.PAYMENTS_STUCK._value.get() == before + 1
    assert await redis.zscore(STUCK, "pay_1") is not None


async def test_the_loop_queues_due_checks_until_stopped(redis: aioredis.Redis) -> None:
    """The worker's convergence loop queues the check of a due payment (counted) and ends when
    the worker stops."""
    await processor(redis, CAPTURED).handle(hint("kartapay"), "job-1")
    await redis.zadd(CONVERGE, {"pay_1": 1})
    first = int(await redis.hget(payment_state_key("pay_1"), "cv_first"))  # type: ignore[misc]
    before = metrics.CONVERGENCE_CHECKS._value.get()
    stopping = asyncio.Event()
    loop = Converger(ConvergeStore(redis, QUEUE, PLAN), 0.05, 10, stopping)
    loop.start()
    job_id = converge_job_id("pay_1", first, 1)
    deadline = time.monotonic() + 10
    while await redis.zscore(QUEUE, job_id) is None:
        assert time.monotonic() < deadline, "no check queued"
        await asyncio.sleep(0.02)
    assert metrics.CONVERGENCE_CHECKS._value.get() == before + 1
    stopping.set()
    await loop.stop()
