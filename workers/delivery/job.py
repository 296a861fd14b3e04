"""Fan-out: signed, ordered, idempotent delivery of transitions to subscribers (DESIGN
"Delivery (fan-out)"; docs/fanout.md).

``workers/main.py`` registers :func:`functions` and calls :func:`on_startup` /
:func:`on_shutdown`. Processing's compare-and-set creates the deliveries and runs the first ones
at once (:func:`workers.delivery.runner.deliver_now`); one job does the rest:

- ``fanout_deliver(subscriber_id, webhook_id)``: one attempt; job id ``fdl:<sub>:<id>:<gen>``,
  written by the Lua scripts (a fresh job per attempt; for a delivery run at once, the safety
  net that runs only should that run die).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import structlog
from arq.worker import Function, Retry, func
from redis.exceptions import RedisError

from service.settings import Settings
from service.store.deliveries import FANOUT_DELIVER, DeliveryAdmin
from service.store.delivery_state import FanoutStore
from service.store.subscribers import SubscriberCache, SubscriberStore, load_subscribers_into
from workers import metrics as worker_metrics
from workers.delivery import metrics
from workers.delivery.client import build_transport
from workers.delivery.errors import FanoutNotStarted
from workers.delivery.runner import STOPPING, FanoutDeps, deliver
from workers.delivery.schedule import RetrySchedule

log = structlog.get_logger("kartahook.fanout")

CTX_KEY = "fanout"
# arq counts every run, Retry included; a run that hits a Redis error is retried, and must never
# drop a delivery.
MAX_TRIES = 10_000


def deps_if_started(ctx: dict[str, Any]) -> FanoutDeps | None:
    """The fan-out resources of this worker, or None when :func:`on_startup` did not run."""
    deps = ctx.get(CTX_KEY)
    return deps if isinstance(deps, FanoutDeps) else None


def _deps(ctx: dict[str, Any]) -> FanoutDeps:
    deps = deps_if_started(ctx)
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
        return await deliver(deps, subscriber_id, webhook_id, str(ctx["job_id"]), until)
    except RedisError as exc:
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


def job_timeout_s(settings: Settings) -> int:
    """The delivery job's timeout: the worker's job timeout, at least twice the HTTP timeout.

    arq re-runs the jobs of a dead worker only after the longest function timeout + 10 s, so
    no delivery job may hold that recovery back beyond what processing needs.
    """
    return max(settings.worker_job_timeout_s, int(settings.delivery_timeout_s * 2))


def functions(settings: Settings) -> list[Function]:
    """The fan-out job as arq registers it."""
    return [
        func(
            fanout_deliver,
            name=FANOUT_DELIVER,
            keep_result=0,
            max_tries=MAX_TRIES,
            timeout=job_timeout_s(settings),
        ),
    ]


def shared_subscriber_cache(ctx: dict[str, Any]) -> SubscriberCache:
    """The worker's one copy of the subscriber registry (processing matches against it)."""
    cache = ctx.get("subscribers")
    if not isinstance(cache, SubscriberCache):
        cache = ctx["subscribers"] = SubscriberCache(ctx["redis"])
    return cache


async def on_startup(ctx: dict[str, Any]) -> None:
    """Build the fan-out resources into ``ctx``; load the subscribers file into Redis.

    ``ctx["delivery_transport"]`` (an httpx transport), when present, is the test seam.
    """
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    transport: httpx.AsyncBaseTransport | None = ctx.get("delivery_transport")
    await load_subscribers_into(redis, settings.subscribers_file, settings.subscriber_allowlist)
    subscribers = shared_subscriber_cache(ctx)
    await subscribers.refresh()
    ctx[CTX_KEY] = FanoutDeps(
        redis=redis,
        settings=settings,
        transport=build_transport(settings, transport),
        store=FanoutStore(redis, settings.queue_name),
        registry=SubscriberStore(redis),
        subscribers=subscribers,
        schedule=RetrySchedule.from_settings(settings),
        rng=random.Random(),
        stopping=ctx.setdefault(STOPPING, asyncio.Event()),
    )
    metrics.DEAD_LETTERS.set(await DeliveryAdmin(redis, settings.queue_name).dead_letter_count())
    for subscriber in await subscribers.all():
        metrics.set_subscriber_state(subscriber.id, "enabled" if subscriber.enabled else "disabled")


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """Close the delivery transport (its connection pool)."""
    deps = ctx.pop(CTX_KEY, None)
    if isinstance(deps, FanoutDeps):
        await deps.transport.aclose()
