"""The processing side of the worker: the ``process_event`` job as arq registers it, and the
resources its startup puts into the :class:`workers.context.WorkerContext`."""

from __future__ import annotations

import time
from typing import Any

import structlog
from arq.worker import Function, Retry, func
from redis.exceptions import RedisError

from service.clock import now_ms
from service.domain.events import EventHint
from service.kartapay.client import KartaPayClient
from service.settings import Settings
from service.store.batcher import RedisUnavailable
from service.store.converge import ConvergePlan, ConvergeStore
from service.store.dead_letters import EventDeadLetters
from service.store.history import HistoryStore, Run
from service.store.layout import PROCESS_EVENT, event_retry_job_id, hint_job_id
from service.store.payments import PaymentStateStore
from service.store.subscribers import SubscriberCache
from workers import metrics
from workers.context import WorkerContext, WorkerNotStarted, worker_context
from workers.delivery import Deliveries, bodies_only
from workers.processing.converge import Converger
from workers.processing.processor import EventProcessor, InlineDelivery, Outcome
from workers.processing.retry_policy import FetchRetryPolicy

log = structlog.get_logger("kartahook.process")

# A run that raises something unexpected (Redis down, a bug) is retried by arq this many times.
UNEXPECTED_ERROR_TRIES = 1000


async def process_event(ctx: dict[str, Any], arg: dict[str, Any]) -> str:
    """arq job: process one stored webhook (see :class:`EventProcessor`), then send the
    deliveries it created that are first in their line."""
    started = time.monotonic()
    hint = EventHint.from_job_arg(arg)
    context = worker_context(ctx)
    processor = context.processor
    if processor is None:
        raise WorkerNotStarted("processing_startup did not run in this worker")
    deliveries = context.deliveries or bodies_only()
    until = deliveries.send_until(started, context.settings.worker_job_timeout_s)
    with structlog.contextvars.bound_contextvars(
        event_id=hint.event_id, payment_id=hint.payment_id, source=hint.source
    ):
        token = str(ctx.get("job_id", hint_job_id(hint)))
        if int(ctx.get("job_try", 1)) > 1:
            # Run again: if its worker died mid-send, what it was sending resumes now.
            await resume_deliveries(context, deliveries)
        result = await processor.handle(hint, token=token, inline_until=until)
        metrics.EVENTS_PROCESSED.labels(result.outcome).inc()
        log.info(
            "event_processed",
            outcome=result.outcome,
            transitions=list(result.emitted),
            fetches=result.fetches,
            attempt=hint.attempt,
            reason=result.reason or None,
            retry_in_s=result.retry_in_s,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        if result.deliveries:
            await deliveries.send_started(result.deliveries, until)
        await record_history(context.history, hint, result)
    return result.outcome


async def record_history(history: HistoryStore | None, hint: EventHint, result: Outcome) -> None:
    """Append the run to its payment's history (after the sends: off the delivery path too). A
    failure costs the history entry only, never the run (logged)."""
    if history is None:
        return
    now = now_ms()
    run = Run(
        hint.received_at_ms,
        result.fetched_ms or now,
        hint.source,
        hint.event_id,
        result.fetched,
        result.outcome,
        result.emitted,
    )
    try:
        await history.record_run(hint, run, now)
    except (RedisError, RedisUnavailable) as exc:
        log.warning("history_not_recorded", error=type(exc).__name__)


async def resume_deliveries(context: WorkerContext, deliveries: Deliveries) -> None:
    """Resume the attempts a dead run of this job may have been sending (to any subscriber:
    a payment's lines span them all), logged when there were any."""
    subscribers = await shared_subscriber_cache(context).all()
    resumed = await deliveries.resume([s.id for s in subscribers])
    if resumed:
        log.info("deliveries_resumed", count=resumed)


async def process_event_job(ctx: dict[str, Any], arg: dict[str, Any]) -> str:
    """arq entry point: :func:`process_event`, retried by arq on anything unexpected."""
    try:
        return await process_event(ctx, arg)
    except RedisError as exc:
        # A Redis outage or failover: expected, and retried; no traceback for it.
        context = worker_context(ctx)
        policy = context.retry_policy or FetchRetryPolicy.from_settings(context.settings)
        log.warning(
            "process_event_redis_unavailable",
            event_id=arg.get("event_id") if isinstance(arg, dict) else None,
            error=type(exc).__name__,
            job_try=ctx.get("job_try"),
        )
        raise Retry(defer=policy.backoff_s(int(ctx.get("job_try", 1)))) from exc
    except Exception as exc:
        # Seen before retried: arq logs retries at INFO, below its logger's level.
        metrics.UNEXPECTED_ERRORS.labels(PROCESS_EVENT).inc()
        fields = arg if isinstance(arg, dict) else {}
        log.exception(
            "process_event_error",
            event_id=fields.get("event_id"),
            payment_id=fields.get("payment_id"),
            source=fields.get("source"),
            error=type(exc).__name__,
            job_try=ctx.get("job_try"),
        )
        context = worker_context(ctx)
        policy = context.retry_policy or FetchRetryPolicy.from_settings(context.settings)
        raise Retry(defer=policy.backoff_s(int(ctx.get("job_try", 1)))) from exc


def processing_function(settings: Settings) -> Function:
    """The ``process_event`` job as arq registers it."""
    return func(
        process_event_job,
        name=PROCESS_EVENT,
        keep_result=0,
        max_tries=UNEXPECTED_ERROR_TRIES,
        timeout=settings.worker_job_timeout_s,
    )


def shared_subscriber_cache(context: WorkerContext) -> SubscriberCache:
    """The worker's one copy of the subscriber registry (created on first use)."""
    if context.subscribers is None:
        context.subscribers = SubscriberCache(context.arq_redis())
    return context.subscribers


async def processing_startup(context: WorkerContext) -> None:
    """Build the resources of the processing side into ``context`` (after delivery's startup,
    whose :class:`workers.delivery.Deliveries` it hands its transitions to)."""
    settings = context.settings
    redis = context.arq_redis()
    client = KartaPayClient.from_settings(settings, transport=context.kartapay_transport)
    policy = FetchRetryPolicy.from_settings(settings)

    async def schedule(hint: EventHint, delay_s: float) -> None:
        # A fresh job per try: arq's Retry would keep the first job key and its one-day TTL.
        await redis.enqueue_job(
            PROCESS_EVENT,
            hint.to_job_args()[0],
            _job_id=event_retry_job_id(hint.source, hint.event_id, hint.attempt),
            _defer_by=delay_s,
        )

    # The fetch lock is a short lease, renewed by the worker's heartbeat while the run holds it.
    plan = ConvergePlan.from_settings(settings)
    store = PaymentStateStore(
        redis, settings.queue_name, lock_ttl_ms=settings.lease_ms, converge=plan
    )
    context.kartapay = client
    context.retry_policy = policy
    context.event_dead_letters = EventDeadLetters(
        redis, settings.queue_name, settings.operator_ttl_s
    )
    # History's records of concurrent runs share the worker's pipelined writes (a record that
    # fails costs its history entry only: record_history).
    context.history = HistoryStore.from_settings(redis, settings, context.script_batcher)
    context.processor = EventProcessor(
        store,
        client,
        shared_subscriber_cache(context),
        context.event_dead_letters,
        schedule,
        policy,
        timeout_s=min(settings.process_timeout_s, settings.worker_job_timeout_s * 0.8),
        inline=InlineDelivery.from_settings(settings),
        deliveries=context.deliveries,
        leases=context.leases,
    )
    context.converger = Converger.from_settings(
        ConvergeStore(redis, settings.queue_name, plan), settings, context.stopping
    )
    context.converger.start()


async def processing_shutdown(context: WorkerContext) -> None:
    converger, context.converger = context.converger, None
    if converger is not None:
        await converger.stop()
    if context.kartapay is not None:
        await context.kartapay.aclose()
        context.kartapay = None
