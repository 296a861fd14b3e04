"""Plain handlers behind the two fan-out jobs: :func:`fan_out` (one transition -> one delivery
per matching subscriber) and :func:`deliver` (one attempt of one delivery)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import orjson
import redis.asyncio as aioredis
import structlog

from service.deliveries import parse_deliver_job_id
from service.jobs import ARQ_JOB_PREFIX, Transition, deserialize, transition_id
from service.lifecycle import SEQ
from service.settings import Settings
from service.subscribers import Subscriber, SubscriberStore
from workers.fanout import metrics
from workers.fanout.client import AttemptResult, post_once
from workers.fanout.message import delivery_body, delivery_headers
from workers.fanout.schedule import RetrySchedule, parse_retry_after
from workers.fanout.store import FanoutStore

log = structlog.get_logger("kartahook.fanout")

FANOUT_JOB_PREFIX = "fan:"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class FanoutDeps:
    """Everything fan-out needs, built once per worker in ``on_startup``."""

    redis: aioredis.Redis
    settings: Settings
    client: httpx.AsyncClient
    store: FanoutStore
    subscribers: SubscriberStore
    schedule: RetrySchedule
    rng: random.Random = field(default_factory=random.Random)

    @property
    def lease_ms(self) -> int:
        """How long an in-flight slot or a probe is held before it is presumed dead."""
        return int((self.settings.delivery_timeout_s + 20) * 1000)


def predecessor_job_keys(transition: Transition) -> list[str]:
    """arq job keys of the fan-out jobs of every earlier status of the same payment."""
    return [
        ARQ_JOB_PREFIX + FANOUT_JOB_PREFIX + transition_id(transition.payment_id, status)
        for status, seq in SEQ.items()
        if seq < transition.seq
    ]


async def pending_predecessors(deps: FanoutDeps, transition: Transition) -> list[Transition]:
    """The earlier transitions of the payment whose fan-out jobs have not finished, by seq.

    Processing emits a payment's transitions in lifecycle order in one atomic step, so every
    earlier transition's fan-out job exists (queued or running) or has finished.
    """
    keys = predecessor_job_keys(transition)
    bodies: list[bytes | None] = await deps.redis.mget(keys)
    pending = []
    for body in bodies:
        if body is not None:
            job = deserialize(body)
            pending.append(Transition.from_job_arg(job["a"][0]))
    return sorted(pending, key=lambda t: t.seq)


async def fan_out(deps: FanoutDeps, transition: Transition) -> str:
    """Create one delivery per subscriber that wants ``transition``.

    Earlier transitions of the payment whose fan-out jobs have not finished yet are fanned out
    first, in order, by this very job (their own jobs then find the deliveries there and do
    nothing, or are taken out of the queue): a later transition never waits, and never
    overtakes an earlier one.
    """
    subscribers = await deps.subscribers.all()
    for earlier in await pending_predecessors(deps, transition):
        await _fan_out_one(deps, earlier, subscribers)
        await _unqueue_fanout_job(deps, earlier)
    return await _fan_out_one(deps, transition, subscribers)


async def _unqueue_fanout_job(deps: FanoutDeps, transition: Transition) -> None:
    """Take a fanned-out transition's own job out of the queue: its work is done. arq skips a
    job that is no longer queued; one already running finds its deliveries there."""
    job_id = FANOUT_JOB_PREFIX + transition.id
    async with deps.redis.pipeline(transaction=True) as pipe:
        pipe.zrem(deps.settings.queue_name, job_id)
        pipe.delete(ARQ_JOB_PREFIX + job_id)
        await pipe.execute()


async def _fan_out_one(
    deps: FanoutDeps, transition: Transition, subscribers: list[Subscriber]
) -> str:
    wanted = [
        s.id
        for s in subscribers
        if s.enabled and s.wants(transition.event_type, transition.source, transition.payment)
    ]
    if not wanted:
        metrics.TRANSITIONS_FANNED_OUT.labels("no_subscriber").inc()
        return "no_subscriber"
    created = await deps.store.insert(
        transition_id=transition.id,
        payment_id=transition.payment_id,
        seq=transition.seq,
        event_type=transition.event_type,
        transition=transition.to_job_args()[0],
        subscriber_ids=wanted,
        now_ms=now_ms(),
    )
    metrics.TRANSITIONS_FANNED_OUT.labels("created" if created else "duplicate").inc()
    log.info(
        "fanout",
        payment_id=transition.payment_id,
        event_type=transition.event_type,
        webhook_id=transition.id,
        subscribers=created,
        duplicates=len(wanted) - len(created),
    )
    return f"created:{len(created)}"


def _attempt_outcome(result: AttemptResult, retry_at_ms: int | None) -> str:
    if result.succeeded:
        return "delivered"
    if result.gone:
        return "gone"
    return "retry" if retry_at_ms is not None else "dead"


# How many deliveries of one (subscriber, payment) line one job runs back to back.
INLINE_CHAIN_MAX = 16


async def deliver(deps: FanoutDeps, subscriber_id: str, tid: str, job_id: str) -> str:
    """Run one attempt of the delivery ``(subscriber_id, tid)`` if this job is still its job.

    When it succeeds and the payment's next transition is waiting for the same subscriber, that
    one is run at once by this job too (up to :data:`INLINE_CHAIN_MAX` in a row), instead of by
    a job of its own: that job stays queued, deferred by the lease, in case this worker dies.
    """
    result, handed = await _deliver_one(deps, subscriber_id, tid, job_id, chain=True)
    for remaining in range(INLINE_CHAIN_MAX - 1, 0, -1):
        if not handed:
            break
        _, _, next_tid, _ = handed.split(":")
        result, handed = await _deliver_one(
            deps, subscriber_id, next_tid, handed, chain=remaining > 1
        )
    return result


async def _deliver_one(
    deps: FanoutDeps, subscriber_id: str, tid: str, job_id: str, chain: bool
) -> tuple[str, str]:
    """One attempt: its result, and the job id of the next delivery handed over (or '')."""
    settings = deps.settings
    gen = parse_deliver_job_id(job_id)
    subscriber = await deps.subscribers.get(subscriber_id)
    if subscriber is None:
        return await _drop(deps, subscriber_id, tid, gen, job_id), ""
    cap = subscriber.cap(settings.delivery_concurrency)
    jitter_ms = int(deps.rng.uniform(0, min(1000.0, settings.delivery_breaker_cooldown_s * 200)))
    acquired = await deps.store.acquire(
        subscriber_id=subscriber_id,
        transition_id=tid,
        gen=gen,
        job_id=job_id,
        enabled=subscriber.enabled,
        cap=cap,
        lease_ms=deps.lease_ms,
        open_jitter_ms=jitter_ms,
        now_ms=now_ms(),
    )
    if not acquired.may_send:
        if acquired.verdict != "stale":
            metrics.DEFERRED.labels(subscriber_id, acquired.verdict).inc()
            if acquired.verdict == "open":
                metrics.set_subscriber_state(subscriber_id, "paused")
        return acquired.verdict, ""
    if acquired.transition is None:
        return "stale", ""
    transition = Transition.from_job_arg(orjson.loads(acquired.transition))
    attempt = acquired.attempts + 1
    hold_ms = deps.lease_ms if chain else 0
    return await _attempt(deps, subscriber, transition, attempt, gen, job_id, cap, hold_ms)


async def _attempt(
    deps: FanoutDeps,
    subscriber: Subscriber,
    transition: Transition,
    attempt: int,
    gen: int,
    job_id: str,
    cap: int,
    hold_ms: int,
) -> tuple[str, str]:
    settings = deps.settings
    body = delivery_body(transition)
    headers = delivery_headers(subscriber, transition.id, body)
    started_at = time.time()
    result = await post_once(
        deps.client, subscriber.url, headers, body, settings.delivery_timeout_s
    )
    finished = now_ms()
    retry_at: int | None = None
    if not result.succeeded and not result.gone:
        retry_after = parse_retry_after(result.retry_after, finished / 1000)
        delay = deps.schedule.next_delay(attempt, retry_after, deps.rng)
        retry_at = None if delay is None else finished + int(delay * 1000)
    outcome = _attempt_outcome(result, retry_at)
    enabled = subscriber.enabled
    if result.gone:
        await deps.subscribers.set_enabled(subscriber.id, False, "gone: answered 410")
        enabled = False
    status = "" if result.status is None else str(result.status)
    entry = {
        "at": datetime.fromtimestamp(started_at, UTC).isoformat(),
        "at_ms": int(started_at * 1000),
        "webhook_id": transition.id,
        "payment_id": transition.payment_id,
        "type": transition.event_type,
        "attempt": attempt,
        "status": result.status,
        "outcome": outcome,
        "latency_ms": round(result.latency_ms, 2),
        "error": result.error,
        "body": result.body_head,
        "next_attempt_ms": retry_at,
    }
    finished_state = await deps.store.finish(
        subscriber_id=subscriber.id,
        transition_id=transition.id,
        gen=gen,
        job_id=job_id,
        outcome="ok" if result.succeeded else "gone" if result.gone else "fail",
        retry_at_ms=retry_at,
        breaker_failures=settings.delivery_breaker_failures,
        breaker_cooldown_ms=int(settings.delivery_breaker_cooldown_s * 1000),
        cap=cap,
        enabled=enabled,
        done_ttl_s=settings.delivery_done_ttl_s,
        log_entry=entry,
        log_cap=settings.delivery_attempt_log_size,
        status=status,
        error=result.error or "",
        now_ms=finished,
        hold_ms=hold_ms,
    )
    _observe(subscriber.id, transition, result, outcome, finished)
    metrics.DEAD_LETTERS.set(finished_state.dead_letters)
    log.info(
        "delivery_attempt",
        subscriber=subscriber.id,
        payment_id=transition.payment_id,
        event_type=transition.event_type,
        webhook_id=transition.id,
        attempt=attempt,
        status=result.status,
        outcome=outcome,
        error=result.error,
        duration_ms=round(result.latency_ms, 2),
        next_attempt_ms=retry_at,
    )
    return finished_state.result, finished_state.handed_job_id


def _observe(
    subscriber_id: str, transition: Transition, result: AttemptResult, outcome: str, at_ms: int
) -> None:
    metrics.DELIVERIES.labels(subscriber_id, outcome).inc()
    metrics.DELIVERY_SECONDS.labels(subscriber_id).observe(result.latency_ms / 1000)
    if result.succeeded:
        seconds = max(0.0, (at_ms - transition.received_at_ms) / 1000)
        metrics.RECEIVED_TO_DELIVERED_SECONDS.labels(subscriber_id).observe(seconds)
        metrics.set_subscriber_state(subscriber_id, "enabled")
    elif result.gone:
        metrics.set_subscriber_state(subscriber_id, "disabled")


async def _drop(deps: FanoutDeps, subscriber_id: str, tid: str, gen: int, job_id: str) -> str:
    """The subscriber was removed: drop its delivery (logged, counted) and free the line."""
    finished = await deps.store.finish(
        subscriber_id=subscriber_id,
        transition_id=tid,
        gen=gen,
        job_id=job_id,
        outcome="removed",
        retry_at_ms=None,
        breaker_failures=deps.settings.delivery_breaker_failures,
        breaker_cooldown_ms=0,
        cap=1,
        enabled=False,
        done_ttl_s=deps.settings.delivery_done_ttl_s,
        log_entry=None,
        log_cap=1,
        status="",
        error="subscriber removed",
        now_ms=now_ms(),
    )
    if finished.result == "dropped":
        metrics.DELIVERIES.labels(subscriber_id, "dropped").inc()
        log.warning("delivery_dropped", subscriber=subscriber_id, webhook_id=tid, reason="removed")
    return finished.result
