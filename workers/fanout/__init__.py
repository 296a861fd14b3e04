"""Fan-out: signed, ordered, idempotent delivery of transitions to subscribers (DESIGN
"Delivery (fan-out)"; docs/fanout.md).

``workers/main.py`` registers :func:`functions` and calls :func:`on_startup` /
:func:`on_shutdown`. Two jobs:

- ``fanout_transition(transition)``: enqueued by processing, job id ``fan:<webhook-id>``.
- ``fanout_deliver(subscriber_id, webhook_id)``: one attempt; job id ``fdl:<sub>:<id>:<gen>``,
  written by the Lua in :mod:`workers.fanout.store` (a fresh job per attempt).
"""

from __future__ import annotations

import random
from typing import Any

import httpx
from arq.worker import Function, Retry, func
from redis.exceptions import RedisError

from service.deliveries import FANOUT_DELIVER, DeliveryAdmin
from service.jobs import FANOUT_TRANSITION, Transition
from service.settings import Settings
from service.subscribers import SubscriberStore, load_subscribers_into
from workers.fanout import metrics
from workers.fanout.client import build_client
from workers.fanout.errors import FanoutNotStarted
from workers.fanout.handlers import FanoutDeps, deliver, fan_out
from workers.fanout.schedule import RetrySchedule
from workers.fanout.store import FanoutStore

CTX_KEY = "fanout"
# arq counts every run, Retry included; a run that hits a Redis error is retried, and must never
# drop a transition.
MAX_TRIES = 10_000


def _deps(ctx: dict[str, Any]) -> FanoutDeps:
    deps = ctx.get(CTX_KEY)
    if not isinstance(deps, FanoutDeps):
        raise FanoutNotStarted("workers.fanout.on_startup did not run in this worker")
    return deps


def _backoff(ctx: dict[str, Any], base: float = 0.05, cap: float = 5.0) -> float:
    tries = int(ctx.get("job_try", 1))
    return float(min(cap, base * 2 ** min(tries, 10)))


async def fanout_transition(ctx: dict[str, Any], arg: dict[str, Any]) -> str:
    """arq job: fan one transition out to its subscribers."""
    try:
        result = await fan_out(_deps(ctx), Transition.from_job_arg(arg))
    except RedisError as exc:
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc
    return result


async def fanout_deliver(ctx: dict[str, Any], subscriber_id: str, webhook_id: str) -> str:
    """arq job: one attempt of one delivery."""
    try:
        return await deliver(_deps(ctx), subscriber_id, webhook_id, str(ctx["job_id"]))
    except RedisError as exc:
        raise Retry(defer=_backoff(ctx, base=0.5, cap=30)) from exc


def functions(settings: Settings) -> list[Function]:
    """The fan-out jobs as arq registers them.

    Their timeout is the worker's job timeout (at least twice the HTTP timeout): arq re-runs the
    jobs of a dead worker only after the longest function timeout + 10 s, so no fan-out job may
    hold that recovery back beyond what processing needs.
    """
    timeout = max(settings.worker_job_timeout_s, int(settings.delivery_timeout_s * 2))
    return [
        func(
            fanout_transition,
            name=FANOUT_TRANSITION,
            keep_result=0,
            max_tries=MAX_TRIES,
            timeout=timeout,
        ),
        func(
            fanout_deliver, name=FANOUT_DELIVER, keep_result=0, max_tries=MAX_TRIES, timeout=timeout
        ),
    ]


async def on_startup(ctx: dict[str, Any]) -> None:
    """Build the fan-out resources into ``ctx``; load the subscribers file into Redis.

    ``ctx["delivery_transport"]`` (an httpx transport), when present, is the test seam.
    """
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    transport: httpx.AsyncBaseTransport | None = ctx.get("delivery_transport")
    subscribers = SubscriberStore(redis)
    await load_subscribers_into(redis, settings.subscribers_file, settings.subscriber_allowlist)
    ctx[CTX_KEY] = FanoutDeps(
        redis=redis,
        settings=settings,
        client=build_client(settings, transport),
        store=FanoutStore(redis, settings.queue_name),
        subscribers=subscribers,
        schedule=RetrySchedule.from_settings(settings),
        rng=random.Random(),
    )
    metrics.DEAD_LETTERS.set(await DeliveryAdmin(redis, settings.queue_name).dead_letter_count())
    for subscriber in await subscribers.all():
        metrics.set_subscriber_state(subscriber.id, "enabled" if subscriber.enabled else "disabled")


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """Close the delivery client."""
    deps = ctx.pop(CTX_KEY, None)
    if isinstance(deps, FanoutDeps):
        await deps.client.aclose()
