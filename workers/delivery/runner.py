"""Plain handlers behind delivery: :func:`deliver` runs one delivery's attempt and, when it
succeeds, the next ones of the same (subscriber, payment) line; :func:`deliver_now` sends the
deliveries that processing has just created and started, inside the processing job;
:func:`wake` is a subscriber's wake job (the half-open probe of a breaker cycle, or a recheck of
its parked deliveries)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import redis.asyncio as aioredis
import structlog

from service.clock import now_ms
from service.logging import write_json_line
from service.retry_after import parse_retry_after
from service.settings import Settings
from service.store.delivery_state import Acquired, FanoutStore, Released
from service.store.layout import parse_deliver_job_id
from service.store.leases import Lease, Leases
from service.store.subscribers import (
    RELOAD_TRIES,
    RegistryKeepsChanging,
    Subscriber,
    SubscriberCache,
    SubscriberStore,
)
from workers.delivery import metrics
from workers.delivery.client import AttemptResult, describe_error, post_once
from workers.delivery.guard import FORBIDDEN_TARGET, SendGuard
from workers.delivery.message import delivery_headers
from workers.delivery.schedule import RetrySchedule, breaker_wake_jitter_ms

log = structlog.get_logger("kartahook.fanout")

# How many deliveries one run sends back to back: its line's next ones, then the subscriber's
# longest-parked ones, each in the slot the last one freed. A backstop only: a run is bounded by
# time (``until``, before arq's job timeout), by the drain and by its slot's lease. It was 16:
# each run that stopped there left its line's next delivery and one woken parked delivery to arq
# jobs of their own (~2 jobs per 16 deliveries under load, ~50 us of worker CPU per delivery;
# docs/benchmarks.md "End-to-end", 2026-12-01 evening).
INLINE_CHAIN_MAX = 1000
# Margin kept between the last attempt a job may start and the job's arq timeout.
JOB_TIMEOUT_MARGIN_S = 5.0


@dataclass
class FanoutDeps:
    """Everything delivery needs, built once per worker in ``on_startup``."""

    redis: aioredis.Redis
    settings: Settings
    transport: httpx.AsyncBaseTransport
    store: FanoutStore
    registry: SubscriberStore
    subscribers: SubscriberCache
    schedule: RetrySchedule
    rng: random.Random = field(default_factory=random.Random)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the worker drains: runs in flight finish their attempt and chain no more."""
    guard: SendGuard | None = None
    """The send-time URL checks (None: built from ``settings`` and ``redis``)."""
    leases: Leases | None = None
    """The worker's leases: each attempt's slot is renewed by the heartbeat while it runs
    (None: not renewed, it lasts one lease)."""
    _urls: dict[str, httpx.URL] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.guard is None:
            self.guard = SendGuard(self.settings, self.redis)

    @property
    def send_guard(self) -> SendGuard:
        assert self.guard is not None  # set by __post_init__
        return self.guard

    @property
    def lease_ms(self) -> int:
        """How long an in-flight slot or a probe is held before it is presumed dead."""
        return self.settings.delivery_lease_ms

    @property
    def hold_ms(self) -> int:
        """How long the job of a delivery sent at once waits, as its safety net."""
        return self.settings.delivery_hold_ms

    def url_of(self, subscriber: Subscriber) -> httpx.URL:
        """The subscriber's URL, parsed once per URL (parsing costs more than sending)."""
        url = self._urls.get(subscriber.url)
        if url is None:
            url = self._urls[subscriber.url] = httpx.URL(subscriber.url)
        return url

    def attempts_until(self, job_started: float, job_timeout_s: float) -> float:
        """The ``time.monotonic()`` after which a job started at ``job_started`` begins no
        more attempts: the last one then ends before arq's timeout cancels the job."""
        margin = self.settings.delivery_timeout_s + JOB_TIMEOUT_MARGIN_S
        return job_started + job_timeout_s - margin


async def deliver_now(deps: FanoutDeps, started: Sequence[Acquired], until: float) -> None:
    """Send, concurrently, the deliveries that processing's compare-and-set has just created
    and started (each the first of its line), then their lines' next ones.

    Their own jobs wait in the queue, deferred by the lease, as the safety net: anything that
    goes wrong here (Redis down, this worker killed) leaves them to those jobs.
    """
    runs = [_run_started(deps, acquired, until) for acquired in started]
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    for acquired, outcome in zip(started, outcomes, strict=True):
        if isinstance(outcome, Exception):
            log.warning(
                "inline_delivery_failed",
                job_id=acquired.job_id,
                error=type(outcome).__name__,
                detail=str(outcome)[:200],
                fallback="its job runs after the lease",
            )


async def _run_started(deps: FanoutDeps, acquired: Acquired, until: float) -> str:
    subscriber = await deps.subscribers.get(acquired.subscriber_id)
    if subscriber is None:  # removed since the compare-and-set: its job drops the delivery
        return "skipped"
    return await _run_line(deps, subscriber, acquired, until)


async def deliver(deps: FanoutDeps, subscriber_id: str, tid: str, job_id: str, until: float) -> str:
    """Run one attempt of the delivery ``(subscriber_id, tid)`` if ``job_id`` is still its job,
    then the line's next ones (see :func:`_run_line`)."""
    started = await _acquire(deps, subscriber_id, tid, job_id)
    if isinstance(started, str):
        return started
    subscriber, acquired = started
    return await _run_line(deps, subscriber, acquired, until)


async def _run_line(
    deps: FanoutDeps, subscriber: Subscriber, acquired: Acquired, until: float
) -> str:
    """Send a started delivery. When it succeeds, the finish script may start the next one for
    this run: the payment's next transition for the same subscriber, or else the subscriber's
    longest-parked delivery. It is sent at once (up to :data:`INLINE_CHAIN_MAX` in a row, only
    while ``time.monotonic() < until`` and the worker is not draining); its own job stays
    queued, deferred by the lease, in case this worker dies."""
    cap = subscriber.cap(deps.settings.delivery_concurrency)
    result = ""
    for n in range(INLINE_CHAIN_MAX):
        may_chain = n < INLINE_CHAIN_MAX - 1
        lease = _hold(deps, subscriber.id, acquired.job_id)
        try:
            result, handed = await _attempt(
                deps, subscriber, acquired, cap, may_chain, until, lease
            )
        finally:
            if lease is not None and deps.leases is not None:
                deps.leases.drop(lease)
        if handed is None:
            break
        acquired = handed
    return result


def _hold(deps: FanoutDeps, subscriber_id: str, job_id: str) -> Lease | None:
    """Have the heartbeat renew the slot of the attempt ``job_id`` while it runs."""
    if deps.leases is None:
        return None
    return deps.leases.hold_slot(subscriber_id, job_id)


async def _acquire(
    deps: FanoutDeps, subscriber_id: str, tid: str, job_id: str
) -> str | tuple[Subscriber, Acquired]:
    """Start the attempt, or say why not (the job's result)."""
    gen = parse_deliver_job_id(job_id)
    cache = deps.subscribers
    for _ in range(RELOAD_TRIES):
        subscriber = await cache.get(subscriber_id)
        if subscriber is None:
            await cache.refresh()
            subscriber = await cache.get(subscriber_id)
        if subscriber is None:
            return await _drop(deps, subscriber_id, tid, gen, job_id)
        acquired = await deps.store.acquire(
            subscriber_id=subscriber_id,
            transition_id=tid,
            gen=gen,
            job_id=job_id,
            enabled=subscriber.enabled,
            cap=subscriber.cap(deps.settings.delivery_concurrency),
            lease_ms=deps.lease_ms,
            open_jitter_ms=_open_jitter_ms(deps),
            now_ms=now_ms(),
            subscribers_version=cache.version,
            recheck_ms=deps.hold_ms,
        )
        if acquired.verdict == "reload":
            await cache.refresh()
            continue
        if not acquired.may_send:
            if acquired.verdict != "stale":
                metrics.DEFERRED.labels(subscriber_id, acquired.verdict).inc()
                if acquired.verdict == "open":
                    metrics.set_subscriber_state(subscriber_id, "paused")
            return acquired.verdict
        if acquired.body is None:
            return "stale"
        return subscriber, acquired
    raise RegistryKeepsChanging(f"the subscriber registry changed {RELOAD_TRIES} times")


def _open_jitter_ms(deps: FanoutDeps) -> int:
    return breaker_wake_jitter_ms(deps.settings.delivery_breaker_cooldown_s, deps.rng)


async def wake(deps: FanoutDeps, subscriber_id: str, until: float) -> str:
    """A subscriber's wake job (``fanout_wake``): one per breaker cycle, due when the cool-down
    ends, or a recheck of deliveries parked over the cap. At the end of a cool-down the
    longest-parked delivery goes as the half-open probe, sent here at once (then, on success,
    the line's next ones, as :func:`deliver` does); its finish closes the breaker and releases
    the parked deliveries as slots free, or re-opens it with the next cycle's wake job. With the
    breaker closed, parked deliveries get jobs as slots allow. The verdict is the job's result."""
    cache = deps.subscribers
    for _ in range(RELOAD_TRIES):
        subscriber = await cache.get(subscriber_id)
        if subscriber is None:
            await cache.refresh()
            subscriber = await cache.get(subscriber_id)
        if subscriber is None:
            # Removed: the admin API woke its parked deliveries, whose jobs drop them.
            metrics.WAKES.labels(subscriber_id, "removed").inc()
            return "removed"
        cap = subscriber.cap(deps.settings.delivery_concurrency)
        released: Released = await deps.store.release(
            subscriber_id=subscriber_id,
            enabled=subscriber.enabled,
            cap=cap,
            lease_ms=deps.lease_ms,
            hold_ms=deps.hold_ms,
            recheck_ms=deps.hold_ms,
            open_jitter_ms=_open_jitter_ms(deps),
            now_ms=now_ms(),
            subscribers_version=cache.version,
        )
        if released.verdict == "reload":
            await cache.refresh()
            continue
        metrics.WAKES.labels(subscriber_id, released.verdict).inc()
        if released.verdict == "open":
            metrics.set_subscriber_state(subscriber_id, "paused")
        if released.probe is None:
            return released.verdict
        await _run_line(deps, subscriber, released.probe, until)
        return released.verdict
    raise RegistryKeepsChanging(f"the subscriber registry changed {RELOAD_TRIES} times")


def _attempt_outcome(result: AttemptResult, retry_at_ms: int | None) -> str:
    if result.succeeded:
        return "delivered"
    if result.gone:
        return "gone"
    return "retry" if retry_at_ms is not None else "dead"


async def _attempt(
    deps: FanoutDeps,
    subscriber: Subscriber,
    acquired: Acquired,
    cap: int,
    may_chain: bool,
    until: float,
    lease: Lease | None = None,
) -> tuple[str, Acquired | None]:
    """POST once and record it: the result, and the line's next delivery if it was handed over
    (decided when the attempt ends: only before ``until``, while the worker is not draining, and
    while the attempt's slot ``lease`` was not lost: a run that lost it takes on nothing more)."""
    assert acquired.body is not None
    job_id, body, webhook_id = acquired.job_id, acquired.body, acquired.webhook_id
    settings = deps.settings
    attempt = acquired.attempts + 1
    started_at = time.time()
    result = await _send(deps, subscriber, webhook_id, body)
    if result.forbidden is not None:
        return await _pause(deps, subscriber, acquired, cap, result)
    finished = now_ms()
    retry_at: int | None = None
    if not result.succeeded and not result.gone:
        retry_after = parse_retry_after(result.retry_after, finished / 1000)
        delay = deps.schedule.next_delay(attempt, retry_after, deps.rng)
        retry_at = None if delay is None else finished + int(delay * 1000)
    outcome = _attempt_outcome(result, retry_at)
    enabled = subscriber.enabled
    if result.gone:
        await deps.registry.set_enabled(subscriber.id, False, "gone: answered 410")
        enabled = False
    status = "" if result.status is None else str(result.status)
    entry = {
        "at": datetime.fromtimestamp(started_at, UTC).isoformat(),
        "at_ms": int(started_at * 1000),
        "webhook_id": webhook_id,
        "payment_id": acquired.payment_id,
        "type": acquired.event_type,
        "attempt": attempt,
        "status": result.status,
        "outcome": outcome,
        "latency_ms": round(result.latency_ms, 2),
        "error": result.error,
        "body": result.body_head,
        "next_attempt_ms": retry_at,
    }
    lost = lease is not None and lease.lost
    chain = may_chain and time.monotonic() < until and not deps.stopping.is_set() and not lost
    finished_state = await deps.store.finish(
        subscriber_id=subscriber.id,
        transition_id=webhook_id,
        gen=parse_deliver_job_id(job_id),
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
        hold_ms=deps.hold_ms if chain else 0,
        lease_ms=deps.lease_ms,
        subscribers_version=deps.subscribers.version,
        open_jitter_ms=_open_jitter_ms(deps),
        recheck_ms=deps.hold_ms,
    )
    _observe(subscriber.id, acquired.received_at_ms, result, outcome, finished)
    metrics.DEAD_LETTERS.set(finished_state.dead_letters)
    line = {
        "subscriber": subscriber.id,
        "payment_id": acquired.payment_id,
        "event_type": acquired.event_type,
        "webhook_id": webhook_id,
        "attempt": attempt,
        "status": result.status,
        "outcome": outcome,
        "error": result.error,
        "duration_ms": round(result.latency_ms, 2),
        "next_attempt_ms": retry_at,
    }
    # One line per attempt, through the JSON pipeline's fast path when it is in force.
    if not write_json_line("info", "delivery_attempt", line):
        log.info("delivery_attempt", **line)
    return finished_state.result, finished_state.handed


async def _send(
    deps: FanoutDeps, subscriber: Subscriber, webhook_id: str, body: bytes
) -> AttemptResult:
    """The send-time checks, then one POST. Never raises (but for cancellation): a refusal is
    the result's ``forbidden`` (nothing sent), any other failure its ``error``."""
    started = time.perf_counter()
    headers: dict[str, str] = {}
    try:
        refusal = await deps.send_guard.refusal(subscriber)
        if refusal is not None:
            return AttemptResult(None, refusal, 0.0, "", None, forbidden=refusal)
        headers = delivery_headers(subscriber, webhook_id, body)
        url = deps.url_of(subscriber)
    except Exception as exc:  # a record that cannot be sent as it is: a failed attempt
        latency_ms = (time.perf_counter() - started) * 1000
        masked = {**subscriber.headers, "secret": subscriber.secret, **headers}
        return AttemptResult(None, describe_error(exc, masked), latency_ms, "", None)
    result = await post_once(deps.transport, url, headers, body, deps.settings.delivery_timeout_s)
    if result.forbidden is not None:  # refused in the connect path (a name's address)
        reason = f"{FORBIDDEN_TARGET}: {result.forbidden}"
        return AttemptResult(None, reason, result.latency_ms, "", None, forbidden=reason)
    return result


async def _pause(
    deps: FanoutDeps, subscriber: Subscriber, acquired: Acquired, cap: int, result: AttemptResult
) -> tuple[str, Acquired | None]:
    """The subscriber may not be sent to (outside the allowlist, or one of kartahook's own
    listeners): disable it with the reason, and park this delivery, unsent, with its other
    ones (the 410 path: parked, neither dropped nor dead-lettered). The attempt log says why.
    Enabling the subscriber (admin API) wakes them, in order."""
    reason = result.forbidden or "paused"
    job_id, webhook_id = acquired.job_id, acquired.webhook_id
    if subscriber.enabled or subscriber.disabled_reason != reason:
        await deps.registry.set_enabled(subscriber.id, False, reason)
    now = now_ms()
    entry = {
        "at": datetime.fromtimestamp(now / 1000, UTC).isoformat(),
        "at_ms": now,
        "webhook_id": webhook_id,
        "payment_id": acquired.payment_id,
        "type": acquired.event_type,
        "attempt": acquired.attempts + 1,
        "status": None,
        "outcome": "paused",
        "latency_ms": round(result.latency_ms, 2),
        "error": reason,
        "body": "",
        "next_attempt_ms": None,
    }
    settings = deps.settings
    finished = await deps.store.finish(
        subscriber_id=subscriber.id,
        transition_id=webhook_id,
        gen=parse_deliver_job_id(job_id),
        job_id=job_id,
        outcome="gone",  # the script's "park it, unsent by choice": no breaker, no wake
        retry_at_ms=None,
        breaker_failures=settings.delivery_breaker_failures,
        breaker_cooldown_ms=int(settings.delivery_breaker_cooldown_s * 1000),
        cap=cap,
        enabled=False,
        done_ttl_s=settings.delivery_done_ttl_s,
        log_entry=entry,
        log_cap=settings.delivery_attempt_log_size,
        status="",
        error=reason,
        now_ms=now,
        lease_ms=deps.lease_ms,
        subscribers_version=deps.subscribers.version,
    )
    metrics.DELIVERIES.labels(subscriber.id, "paused").inc()
    metrics.set_subscriber_state(subscriber.id, "disabled")
    log.warning("subscriber_paused", subscriber=subscriber.id, webhook_id=webhook_id, reason=reason)
    return finished.result, None


def _observe(
    subscriber_id: str, received_at_ms: int, result: AttemptResult, outcome: str, at_ms: int
) -> None:
    metrics.DELIVERIES.labels(subscriber_id, outcome).inc()
    metrics.DELIVERY_SECONDS.labels(subscriber_id).observe(result.latency_ms / 1000)
    if result.succeeded:
        seconds = max(0.0, (at_ms - received_at_ms) / 1000)
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
