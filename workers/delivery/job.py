"""Fan-out: signed, ordered, idempotent delivery of transitions to subscribers (DESIGN
"Delivery (fan-out)"; docs/fanout.md).

``workers/main.py`` registers :func:`functions` and calls :func:`on_startup` /
:func:`on_shutdown`. Processing's compare-and-set creates the deliveries and runs the first ones
at once (through :class:`workers.delivery.Deliveries`, which :func:`on_startup` puts in the
worker context); one job does the rest:

- ``fanout_deliver(subscriber_id, webhook_id)``: one attempt; job id ``fdl:<sub>:<id>:<gen>``,
  written by the Lua scripts (a fresh job per attempt; for a delivery run at once, the safety
  net that runs only should that run die).
- ``fanout_wake(subscriber_id)``: a subscriber's wake job, job id ``fwk:<sub>:<at>``, written
  by the Lua scripts: one per breaker cycle (``at`` = its ``open_until``; it sends the half-open
  probe), or a recheck of deliveries parked over the cap. Parked deliveries have no job of
  their own.
"""

from __future__ import annotations

import random
import time
from typing import Any

import structlog
from arq.worker import Function, Retry, func
from redis.exceptions import RedisError

from service.clock import now_ms
from service.errors import RedisUnavailable
from service.settings import Settings
from service.store.deliveries import DeliveryAdmin
from service.store.delivery_state import FanoutStore
from service.store.layout import FANOUT_DELIVER, FANOUT_WAKE
from service.store.subscribers import SubscriberCache, SubscriberStore, load_subscribers_into
from workers import metrics as worker_metrics
from workers.context import WorkerContext, worker_context
from workers.delivery import metrics
from workers.delivery.client import build_transport
from workers.delivery.errors import FanoutNotStarted
from workers.delivery.guard import SendGuard
from workers.delivery.handoff import FanoutHandoff
from workers.delivery.runner import FanoutDeps, deliver, wake
from workers.delivery.schedule import RetrySchedule

log = structlog.get_logger("kartahook.fanout")

# arq counts every run, Retry included; a run that hits a Redis error is retried, and must never
# drop a delivery.
MAX_TRIES = 10_000


def _deps(ctx: dict[str, Any]) -> FanoutDeps:
    deps = worker_context(ctx).fanout
    if deps is None:
        raise FanoutNotStarted("workers.delivery.job.on_startup did not run in this worker")
    return deps


def _backoff(ctx: dict[str, Any], base: float = 0.05, cap: float = 5.0) -> float:
    tries = int(ctx.get("job_try", 1))
    return float(min(cap, base * 2 ** min(tries, 10)))


async def fanout_deliver(ctx: dict[str, Any], subscriber_id: str, webhook_id: str) -> str:
    """arq job: one attempt of one delivery (and the line's next ones, while time allows)."""
    deps = _deps(ctx)
    until = deps.attempts_until(time.monotonic(), job_timeout_s(deps.settings))
    try:
        if int(ctx.get("job_try", 1)) > 1:
            # Run again: if its worker died mid-chain, the attempt it was sending resumes now.
            await deps.store.resume([subscriber_id], now_ms())
        return await deliver(deps, subscriber_id, webhook_id, str(ctx["job_id"]), until)
    except (RedisError, RedisUnavailable) as exc:  # an outage: retried, not a bug
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc
    except Exception as exc:
        # A bug: seen (logged with its traceback, counted) before retried, never dropped.
        worker_metrics.UNEXPECTED_ERRORS.labels(FANOUT_DELIVER).inc()
        log.exception(
            "fanout_deliver_error",
            subscriber_id=subscriber_id,
            webhook_id=webhook_id,
            error=type(exc).__name__,
            job_try=ctx.get("job_try"),
        )
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc


async def fanout_wake(ctx: dict[str, Any], subscriber_id: str) -> str:
    """arq job: a subscriber's wake job (the probe of a breaker cycle, or a recheck)."""
    deps = _deps(ctx)
    until = deps.attempts_until(time.monotonic(), job_timeout_s(deps.settings))
    try:
        if int(ctx.get("job_try", 1)) > 1:
            # Run again: if its worker died sending the probe, the probe's job resumes now.
            await deps.store.resume([subscriber_id], now_ms())
        return await wake(deps, subscriber_id, until)
    except (RedisError, RedisUnavailable) as exc:  # an outage: retried, not a bug
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc
    except Exception as exc:
        worker_metrics.UNEXPECTED_ERRORS.labels(FANOUT_WAKE).inc()
        log.exception(
            "fanout_wake_error",
            subscriber_id=subscriber_id,
            error=type(exc).__name__,
            job_try=ctx.get("job_try"),
        )
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc


def job_timeout_s(settings: Settings) -> int:
    """The delivery job's timeout: the worker's job timeout, at least twice the HTTP timeout.

    A dead worker's jobs run again once their in-progress key, a short lease renewed while
    they run (``workers.main.ResilientWorker``), lapses: this timeout does not delay that.
    """
    return max(settings.worker_job_timeout_s, int(settings.delivery_timeout_s * 2))


def functions(settings: Settings) -> list[Function]:
    """The fan-out jobs as arq registers them."""
    return [
        func(
            fanout_deliver,
            name=FANOUT_DELIVER,
            keep_result=0,
            max_tries=MAX_TRIES,
            timeout=job_timeout_s(settings),
        ),
        func(
            fanout_wake,
            name=FANOUT_WAKE,
            keep_result=0,
            max_tries=MAX_TRIES,
            timeout=job_timeout_s(settings),
        ),
    ]


async def on_startup(ctx: dict[str, Any]) -> None:
    """arq hook: :func:`delivery_startup` of the worker context in ``ctx``."""
    await delivery_startup(worker_context(ctx))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """arq hook: :func:`delivery_shutdown` of the worker context in ``ctx``."""
    await delivery_shutdown(worker_context(ctx))


async def delivery_startup(context: WorkerContext) -> None:
    """Build the fan-out resources into ``context`` (``fanout``, and ``deliveries`` for
    processing); load the subscribers file into Redis. ``context.delivery_transport`` (an
    httpx transport), when set, is the test seam."""
    settings = context.settings
    redis = context.arq_redis()
    guard = SendGuard(settings, redis)
    await guard.refresh()
    await load_subscribers_into(
        redis, settings.subscribers_file, settings.subscriber_allowlist, guard.targets
    )
    if context.subscribers is None:
        context.subscribers = SubscriberCache(redis)
    subscribers = context.subscribers
    await subscribers.refresh()
    deps = FanoutDeps(
        redis=redis,
        settings=settings,
        transport=build_transport(settings, context.delivery_transport, guard.address_refusal),
        store=FanoutStore(
            redis, settings.queue_name, settings.operator_ttl_s, context.script_batcher
        ),
        registry=SubscriberStore(redis),
        subscribers=subscribers,
        schedule=RetrySchedule.from_settings(settings),
        rng=random.Random(),
        stopping=context.stopping,
        guard=guard,
        leases=context.leases,
    )
    context.fanout = deps
    context.deliveries = FanoutHandoff.from_deps(deps)
    metrics.DEAD_LETTERS.set(await DeliveryAdmin(redis, settings.queue_name).dead_letter_count())
    for subscriber in await subscribers.all():
        metrics.set_subscriber_state(subscriber.id, "enabled" if subscriber.enabled else "disabled")


async def delivery_shutdown(context: WorkerContext) -> None:
    """Close the delivery transport (its connection pool)."""
    deps, context.fanout, context.deliveries = context.fanout, None, None
    if deps is not None:
        await deps.transport.aclose()
