"""Staging for the Lua script tests, only through the stores' public methods: payment lines
recorded as processing records them, attempts acquired and finished as the delivery job does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.domain.events import transition_id
from service.store.deliveries import DeliveryAdmin, delivery_key
from service.store.delivery_state import Acquired, FanoutStore, Finished
from service.store.layout import (
    ARQ_JOB_PREFIX,
    LINE_TTL_S,
    deliver_job_id,
    head_key,
    order_key,
    snapshot_key,
    wake_job_id,
)
from service.store.payments import (
    TRANSITIONS_LOG_KEY,
    Candidate,
    PaymentStateStore,
    RecordResult,
    state_key,
)
from tests.store.lua.keyspace import NO_TTL, Expected, job_ttl, ttl_s

QUEUE = "arq:queue"
SUB = "ledger"
OTHER_SUB = "crm"
PID = "pay_1"
LOCK_TTL_MS = 60_000
STATE_TTL_S = 3_600
DIRTY_TTL_S = 600
LEASE_MS = 30_000
DONE_TTL_S = 86_400
# How long a dead letter (its hash and snapshot) is kept: unlike LINE_TTL_S, to tell them apart.
OPERATOR_TTL_S = 172_800
RECEIVED_MS = 1_700_000_000_000
# Statuses in lifecycle order; a line's n-th transition has seq n (from 1).
STATUSES = ["pending", "submitted", "approved", "captured", "completed"]


def tid(pid: str, status: str) -> str:
    """The webhook-id of a payment's transition to ``status``."""
    return transition_id(pid, status)


def job_key(job_id: str) -> str:
    return ARQ_JOB_PREFIX + job_id


def body_of(pid: str, status: str) -> bytes:
    return orjson.dumps({"id": tid(pid, status), "type": f"payment.{status}"})


def candidate(pid: str, status: str, subscribers: Sequence[str] = (SUB,)) -> Candidate:
    seq = STATUSES.index(status) + 1
    return Candidate(
        seq, status, tid(pid, status), f"payment.{status}", body_of(pid, status), tuple(subscribers)
    )


def payment_store(redis: aioredis.Redis) -> PaymentStateStore:
    return PaymentStateStore(
        redis, QUEUE, lock_ttl_ms=LOCK_TTL_MS, state_ttl_s=STATE_TTL_S, dirty_ttl_s=DIRTY_TTL_S
    )


async def record(
    redis: aioredis.Redis,
    pid: str,
    statuses: Sequence[str],
    subscribers: Sequence[str] = (SUB,),
    *,
    holder: str = "tok",
    version: str = "0",
    **kwargs: Any,
) -> RecordResult:
    """Record the payment at the last of ``statuses``, with a candidate for each of them."""
    last = statuses[-1]
    return await payment_store(redis).record(
        pid,
        holder,
        seq=STATUSES.index(last) + 1,
        status=last,
        at="2024-05-01T10:00:00Z",
        candidates=[candidate(pid, s, subscribers) for s in statuses],
        subscribers_version=version,
        received_at_ms=RECEIVED_MS,
        **kwargs,
    )


def payment_keys(pid: str = PID) -> Expected:
    """The keys a recorded payment leaves: its state and the transitions log."""
    return {state_key(pid): ("hash", ttl_s(STATE_TTL_S)), TRANSITIONS_LOG_KEY: ("stream", NO_TTL)}


def line(sub: str, tids: Sequence[str], pid: str = PID) -> Expected:
    """A (subscriber, payment) line with a head: its deliveries, order and head, and the
    snapshots its deliveries refer to (each LINE_TTL_S)."""
    keys: Expected = {delivery_key(sub, t): ("hash", ttl_s(LINE_TTL_S)) for t in tids}
    keys.update(snapshots(tids))
    keys[order_key(sub, pid)] = ("zset", ttl_s(LINE_TTL_S))
    keys[head_key(sub, pid)] = ("string", ttl_s(LINE_TTL_S))
    return keys


def snapshots(tids: Sequence[str]) -> Expected:
    """The snapshots of transitions some pending or dead delivery refers to."""
    return {snapshot_key(t): ("hash", ttl_s(LINE_TTL_S)) for t in tids}


def dead(sub: str, transition: str) -> Expected:
    """A dead letter's hash and its snapshot, kept OPERATOR_TTL_S."""
    return {
        delivery_key(sub, transition): ("hash", ttl_s(OPERATOR_TTL_S)),
        snapshot_key(transition): ("hash", ttl_s(OPERATOR_TTL_S)),
    }


def job_entry(sub: str, transition: str, gen: int, due_in_ms: int = 0) -> Expected:
    """A delivery job written by the scripts, due ``due_in_ms`` after the script's now."""
    return {job_key(deliver_job_id(sub, transition, gen)): ("string", job_ttl(due_in_ms))}


def wake_entry(sub: str, at_ms: int, due_in_ms: int) -> Expected:
    """A subscriber's wake job for ``at_ms`` written by the scripts, due ``due_in_ms`` after the
    script's now."""
    return {job_key(wake_job_id(sub, at_ms)): ("string", job_ttl(due_in_ms))}


def fanout(redis: aioredis.Redis) -> FanoutStore:
    return FanoutStore(redis, QUEUE, OPERATOR_TTL_S)


def admin(redis: aioredis.Redis) -> DeliveryAdmin:
    return DeliveryAdmin(redis, QUEUE)


async def acquire(
    redis: aioredis.Redis,
    transition: str,
    gen: int,
    now_ms: int,
    *,
    sub: str = SUB,
    job_id: str | None = None,
    enabled: bool = True,
    cap: int = 10,
    lease_ms: int = LEASE_MS,
    open_jitter_ms: int = 0,
    version: str = "0",
    recheck_ms: int = 0,
) -> Acquired:
    """Acquire the attempt of job (sub, transition, gen) as the delivery job does."""
    return await fanout(redis).acquire(
        subscriber_id=sub,
        transition_id=transition,
        gen=gen,
        job_id=job_id or deliver_job_id(sub, transition, gen),
        enabled=enabled,
        cap=cap,
        lease_ms=lease_ms,
        open_jitter_ms=open_jitter_ms,
        now_ms=now_ms,
        subscribers_version=version,
        recheck_ms=recheck_ms,
    )


async def finish(
    redis: aioredis.Redis,
    transition: str,
    gen: int,
    now_ms: int,
    outcome: str,
    *,
    sub: str = SUB,
    retry_at_ms: int | None = None,
    threshold: int = 5,
    cooldown_ms: int = 60_000,
    cap: int = 10,
    enabled: bool = True,
    log_entry: dict[str, Any] | None = None,
    log_cap: int = 100,
    status: str = "200",
    error: str = "",
    hold_ms: int = 0,
    lease_ms: int = LEASE_MS,
    version: str = "0",
    open_jitter_ms: int = 0,
    recheck_ms: int = 0,
) -> Finished:
    """Finish the attempt of job (sub, transition, gen) as the delivery job does."""
    return await fanout(redis).finish(
        subscriber_id=sub,
        transition_id=transition,
        gen=gen,
        job_id=deliver_job_id(sub, transition, gen),
        outcome=outcome,
        retry_at_ms=retry_at_ms,
        breaker_failures=threshold,
        breaker_cooldown_ms=cooldown_ms,
        cap=cap,
        enabled=enabled,
        done_ttl_s=DONE_TTL_S,
        log_entry=log_entry,
        log_cap=log_cap,
        status=status,
        error=error,
        now_ms=now_ms,
        hold_ms=hold_ms,
        lease_ms=lease_ms,
        subscribers_version=version,
        open_jitter_ms=open_jitter_ms,
        recheck_ms=recheck_ms,
    )
