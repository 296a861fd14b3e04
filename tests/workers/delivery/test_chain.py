"""A delivery job that succeeds runs the payment's next waiting delivery at once (real worker,
real Redis, a real subscriber on 127.0.0.1), with the next job kept queued as a safety net."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    Recorder,
    emit,
    make_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import serve_app, wait_for

STEPS = ["submitted", "approved", "captured", "completed"]


async def test_one_delivery_job_delivers_a_payments_waiting_steps_in_order(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Four waiting steps go out in order from one fanout_deliver job; while one is in flight,
    the next one's job waits in the queue, deferred by the lease, in case the worker dies."""
    settings = settings_for(redis_url)
    started_jobs: list[str] = []
    recorder = Recorder(lambda n, _b: (200, {}, 1.0 if n == 2 else 0.0))
    worker = make_worker(settings, max_jobs=1, started_jobs=started_jobs)
    items = [transition("pay_1", status) for status in STEPS]
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        for item in items:
            await emit(redis, settings, item)
        task = asyncio.create_task(worker.async_run())
        try:

            async def second_in_flight() -> bool:
                return recorder.in_flight == 1 and len(recorder.requests) == 2

            await wait_for(second_in_flight, timeout_s=20)
            queued = await redis.zrange(settings.queue_name, 0, -1, withscores=True)
            [(job_id, score)] = [(j.decode(), s) for j, s in queued if j.startswith(b"fdl:")]
            assert items[1].id in job_id  # approved runs inline; its own job is the safety net
            assert score > time.time() * 1000 + 5_000
            await asyncio.wait_for(task, 30)
        finally:
            if not task.done():
                task.cancel()
            await worker.close()
    assert recorder.ids() == [item.id for item in items]
    assert [j for j in started_jobs if j.startswith("fdl:")] == [f"fdl:ledger:{items[0].id}:1"]
    assert await redis.zcard(settings.queue_name) == 0


async def test_a_freed_slot_goes_to_a_parked_delivery_in_the_same_job(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """With a cap of one, deliveries of other payments park; the job holding the slot, with
    nothing next in its own line, sends them itself instead of waking each into a new job."""
    settings = settings_for(redis_url)
    started_jobs: list[str] = []
    recorder = Recorder()
    worker = make_worker(settings, max_jobs=10, started_jobs=started_jobs)
    items = [transition(f"pay_{n}", "captured") for n in range(3)]
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base, concurrency=1))
        for item in items:
            await emit(redis, settings, item)
        started = time.monotonic()
        try:
            await asyncio.wait_for(worker.async_run(), 20)
        finally:
            await worker.close()
    assert sorted(recorder.ids()) == sorted(item.id for item in items)
    assert len(recorder.requests) == 3
    # Only the three first jobs ran: no parked delivery needed a job of its own (a parked one's
    # next job would be due only after the 30 s lease).
    assert sorted(started_jobs) == sorted(f"fdl:ledger:{item.id}:1" for item in items)
    assert time.monotonic() - started < 15
    assert await redis.zcard(settings.queue_name) == 0
