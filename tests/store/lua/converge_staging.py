"""Staging for the convergence script tests: a payment store with a convergence plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from service.store.converge import ConvergePlan, ConvergeStore
from service.store.payments import PaymentStateStore, RecordResult
from tests.store.lua.staging import (
    DIRTY_TTL_S,
    LOCK_TTL_MS,
    QUEUE,
    RECEIVED_MS,
    STATE_TTL_S,
    STATUSES,
    candidate,
)

# Delays 10 s, 20 s, then every 50 s, for 1000 s; at most 2 stuck payments kept.
PLAN = ConvergePlan(schedule_s=(10, 20), repeat_s=50, horizon_s=1000, stuck_max=2)
D0_MS, D1_MS, REPEAT_MS, HORIZON_MS = 10_000, 20_000, 50_000, 1_000_000
# Slack between the script's clock and the test's reading of it.
CLOCK_SLACK_MS = 5_000


def converging_store(redis: aioredis.Redis) -> PaymentStateStore:
    return PaymentStateStore(
        redis,
        QUEUE,
        lock_ttl_ms=LOCK_TTL_MS,
        state_ttl_s=STATE_TTL_S,
        dirty_ttl_s=DIRTY_TTL_S,
        converge=PLAN,
    )


def converge_store(redis: aioredis.Redis) -> ConvergeStore:
    return ConvergeStore(redis, QUEUE, PLAN)


async def record_status(
    redis: aioredis.Redis, pid: str, status: str, *, holder: str = "tok", **kwargs: Any
) -> RecordResult:
    """Record ``pid`` at ``status`` (no subscribers: no deliveries), with the plan."""
    statuses: Sequence[str] = STATUSES[: STATUSES.index(status) + 1] if status in STATUSES else []
    seq = STATUSES.index(status) + 1 if status in STATUSES else 6
    return await converging_store(redis).record(
        pid,
        holder,
        seq=seq,
        status=status,
        at="2024-05-01T10:00:00Z",
        candidates=[candidate(pid, s, ()) for s in statuses],
        subscribers_version="0",
        received_at_ms=RECEIVED_MS,
        **kwargs,
    )


def near(actual: int, expected: int, slack_ms: int = CLOCK_SLACK_MS) -> bool:
    return expected - slack_ms <= actual <= expected + slack_ms
