"""Helpers for the fan-out tests: a recording subscriber that fails on demand, a real arq worker
running the fan-out functions, and transitions to emit as processing does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.worker import Worker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.domain.events import Transition
from service.settings import Settings
from service.store.jobs import deserialize, serialize
from service.store.payments import PaymentStateStore
from service.store.subscribers import Subscriber, SubscriberCache
from tests.support import arq_pool
from workers.context import CTX_KEY, WorkerContext
from workers.delivery import job as fanout
from workers.delivery.message import delivery_body
from workers.processing.processor import match_subscribers

__all__ = ["arq_pool"]

LIFECYCLE = ["init", "pending", "submitted", "approved", "captured", "completed"]
SEQ = {status: index for index, status in enumerate(LIFECYCLE)} | {"canceled": 6, "failed": 6}


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data


# A behaviour answers (status, extra headers, seconds to sleep first) for the n-th request (from 1).
Behaviour = Callable[[int, dict[str, Any]], tuple[int, dict[str, str], float]]


def always(status: int) -> Behaviour:
    return lambda _n, _body: (status, {}, 0.0)


@dataclass
class Recorder:
    """A subscriber endpoint that records every request and answers as ``behaviour`` says."""

    behaviour: Behaviour = field(default_factory=lambda: always(200))
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                arrived = time.time()
                status, headers, sleep_s = self.behaviour(
                    len(self.requests) + 1, orjson.loads(body)
                )
                record = Received(arrived, dict(request.headers), body, status)
                self.requests.append(record)
                if sleep_s:
                    await asyncio.sleep(sleep_s)
                return Response(b'{"ok": true}', status_code=status, headers=headers)
            finally:
                self.in_flight -= 1

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.delivered()]


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    """Settings for a test: a compressed schedule, no jitter, quick breaker."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "delivery_retry_schedule_s": ["0.2", "0.2", "0.2"],
        "delivery_retry_repeat_s": 0,
        "delivery_jitter": 0,
        "delivery_timeout_s": 10,
        "delivery_breaker_failures": 1000,
        "delivery_breaker_cooldown_s": 1,
    }
    values.update(overrides)
    return Settings(**values)


def subscriber(sub_id: str, base_url: str, **fields: Any) -> Subscriber:
    return Subscriber(id=sub_id, url=f"{base_url}/hook", **fields)


def transition(payment_id: str, status: str, received_at_ms: int | None = None) -> Transition:
    return Transition(
        payment_id=payment_id,
        status=status,
        seq=SEQ[status],
        occurred_at="2024-05-01T10:00:00Z",
        source="kartapay",
        event_id=f"evt-{payment_id}-{status}",
        received_at_ms=received_at_ms or int(time.time() * 1000),
        payment={
            "id": payment_id,
            "status": status,
            "amount": 1000,
            "context": {"channels": ["web"]},
        },
    )


async def emit(redis: aioredis.Redis, settings: Settings, item: Transition) -> int:
    """Record ``item`` as processing does: the compare-and-set that creates its deliveries, with
    the jobs of the heads due at once (nobody sends them inline). Returns 1 if it was emitted,
    0 if that state was already recorded."""
    subscribers = SubscriberCache(redis)
    await subscribers.refresh()
    store = PaymentStateStore(redis, settings.queue_name, lock_ttl_ms=60_000)
    result = await store.record(
        item.payment_id,
        "test",
        seq=item.seq,
        status=item.status,
        at=item.occurred_at,
        candidates=match_subscribers([item], await subscribers.all(), delivery_body),
        subscribers_version=subscribers.version,
        received_at_ms=item.received_at_ms,
    )
    return result.emitted


def make_worker(
    settings: Settings,
    max_jobs: int = 10,
    burst: bool = True,
    started_jobs: list[str] | None = None,
    **extra_ctx: Any,
) -> Worker:
    """A real arq worker running the fan-out functions (burst mode unless told); the id of each
    job it starts is appended to ``started_jobs`` when given. ``extra_ctx`` are fields of its
    :class:`WorkerContext` (e.g. ``delivery_transport``)."""

    async def on_job_start(ctx: dict[str, Any]) -> None:
        if started_jobs is not None:
            started_jobs.append(str(ctx["job_id"]))

    async def startup(ctx: dict[str, Any]) -> None:
        ctx[CTX_KEY] = WorkerContext(settings, **extra_ctx)
        await fanout.on_startup(ctx)

    assert settings.redis_url
    return Worker(
        functions=fanout.functions(settings),
        on_startup=startup,
        on_shutdown=fanout.on_shutdown,
        on_job_start=on_job_start,
        burst=burst,
        poll_delay=0.02,
        max_jobs=max_jobs,
        keep_result=0,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        queue_name=settings.queue_name,
    )


async def run_worker(worker: Worker, timeout_s: float = 60) -> None:
    """Run a burst worker until the queue is empty (deferred jobs included)."""
    try:
        await asyncio.wait_for(worker.async_run(), timeout_s)
    finally:
        await worker.close()


async def run_until(
    worker: Worker, predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30
) -> None:
    """Run a worker in the background until ``predicate`` holds, then stop it."""
    task = asyncio.create_task(worker.async_run())
    try:
        deadline = time.monotonic() + timeout_s
        while not await predicate():
            if task.done():
                task.result()
                if await predicate():
                    break
                raise AssertionError("the worker stopped before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Let the jobs still running finish first: close() cancels them, and then fails with
        # their CancelledError before on_shutdown runs (leaving the transports open).
        running = [job for job in worker.tasks.values() if not job.done()]
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        await worker.close()
