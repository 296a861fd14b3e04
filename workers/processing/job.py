"""The processing side of the worker: the ``process_event`` job as arq registers it, and the
resources its ``on_startup`` puts into ``ctx``."""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from arq.worker import Function, Retry, func

from service.domain.events import PROCESS_EVENT, EventHint
from service.kartapay.client import KartaPayClient
from service.settings import Settings
from service.store.dead_letters import EventDeadLetters
from service.store.payments import PaymentStateStore
from workers import metrics
from workers.delivery.job import shared_subscriber_cache
from workers.processing.processor import EventProcessor, InlineDelivery, process_event
from workers.processing.retry_policy import FetchRetryPolicy

log = structlog.get_logger("kartahook.process")

# A run that raises something unexpected (Redis down, a bug) is retried by arq this many times.
UNEXPECTED_ERROR_TRIES = 1000


async def process_event_job(ctx: dict[str, Any], arg: dict[str, Any]) -> str:
    """arq entry point: :func:`process_event`, retried by arq on anything unexpected."""
    try:
        return await process_event(ctx, arg)
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
        policy: FetchRetryPolicy = ctx["retry_policy"]
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


async def processing_startup(ctx: dict[str, Any]) -> None:
    """Build the resources of the processing side into ``ctx``."""
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    transport: httpx.AsyncBaseTransport | None = ctx.get("kartapay_transport")
    client = KartaPayClient.from_settings(settings, transport=transport)
    policy = FetchRetryPolicy.from_settings(settings)

    async def schedule(hint: EventHint, delay_s: float) -> None:
        # A fresh job per try: arq's Retry would keep the first job key and its one-day TTL.
        await redis.enqueue_job(
            PROCESS_EVENT,
            hint.to_job_args()[0],
            _job_id=f"{hint.job_id}:r{hint.attempt}",
            _defer_by=delay_s,
        )

    store = PaymentStateStore(
        redis,
        settings.queue_name,
        lock_ttl_ms=(settings.worker_job_timeout_s + 10) * 1000,
    )
    ctx["kartapay"] = client
    ctx["retry_policy"] = policy
    ctx["event_dead_letters"] = EventDeadLetters(redis, settings.queue_name)
    ctx["event_processor"] = EventProcessor(
        store,
        client,
        shared_subscriber_cache(ctx),
        ctx["event_dead_letters"],
        schedule,
        policy,
        timeout_s=min(settings.process_timeout_s, settings.worker_job_timeout_s * 0.8),
        inline=InlineDelivery.from_settings(settings),
    )


async def processing_shutdown(ctx: dict[str, Any]) -> None:
    client: KartaPayClient | None = ctx.get("kartapay")
    if client is not None:
        await client.aclose()
