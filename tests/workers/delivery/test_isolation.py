"""Order, concurrency caps, the circuit breaker, and isolation of a slow subscriber."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import defaultdict

import redis.asyncio as aioredis

from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    LIFECYCLE,
    SEQ,
    Recorder,
    emit,
    make_worker,
    run_until,
    run_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import serve_app


async def test_order_holds_while_the_subscriber_fails_intermittently(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Per payment, nothing is sent before the previous status succeeded, despite random 500s."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.02"] * 40)
    rng = random.Random(5)
    recorder = Recorder(lambda _n, _b: (500 if rng.random() < 0.4 else 200, {}, 0.0))
    payments = [f"pay_{i}" for i in range(6)]
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base, concurrency=8))
        for status in LIFECYCLE[1:]:
            for payment in payments:
                await emit(redis, settings, transition(payment, status))
        await run_worker(make_worker(settings), timeout_s=90)
    assert any(r.status == 500 for r in recorder.requests)
    by_payment: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for request in recorder.requests:
        body = request.json
        by_payment[body["data"]["id"]].append((SEQ[body["type"][8:]], request.status))
    for payment in payments:
        expected = 1
        for seq, status in by_payment[payment]:
            assert seq == expected, (payment, by_payment[payment])
            if status == 200:
                expected += 1
        assert expected == 6, (payment, by_payment[payment])


async def test_concurrency_cap_bounds_requests_in_flight(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A subscriber with cap 2 never has more than 2 requests in flight; all are delivered."""
    settings = settings_for(redis_url)
    recorder = Recorder(lambda _n, _b: (200, {}, 0.2))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("capped", base, concurrency=2))
        for i in range(8):
            await emit(redis, settings, transition(f"pay_c{i}", "captured"))
        await run_worker(make_worker(settings, max_jobs=10))
    assert len(recorder.delivered()) == 8
    assert recorder.max_in_flight == 2


async def test_circuit_breaker_pauses_then_probes_and_drops_nothing(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """After 3 failures the subscriber is paused for the cool-down, probed once, then resumes."""
    settings = settings_for(
        redis_url,
        delivery_retry_schedule_s=["0.05"] * 30,
        delivery_breaker_failures=3,
        delivery_breaker_cooldown_s=1.0,
    )
    recorder = Recorder(lambda n, _b: (503 if n <= 4 else 200, {}, 0.0))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("flaky", base, concurrency=1))
        for i in range(3):
            await emit(redis, settings, transition(f"pay_b{i}", "captured"))
        await run_worker(make_worker(settings))
    times = [r.at for r in recorder.requests]
    statuses = [r.status for r in recorder.requests]
    assert statuses == [503, 503, 503, 503, 200, 200, 200]
    # Failures 1-3 come on the 0.05 s schedule; then a pause of the cool-down before the
    # probe (4th), which fails and opens the breaker again; the 5th is the next probe.
    assert times[2] - times[0] < 0.8
    assert times[3] - times[2] >= 0.95
    assert times[4] - times[3] >= 0.95
    assert len(set(recorder.ids())) == 3


async def test_a_slow_subscriber_does_not_delay_a_fast_one(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A fast subscriber's recorded->delivered latency is unchanged beside a 5 s subscriber."""
    settings = settings_for(redis_url)
    fast, slow = Recorder(), Recorder(lambda _n, _b: (200, {}, 5.0))
    count = 12
    enqueued: dict[str, float] = {}

    async def measure(prefix: str) -> list[float]:
        async def feed() -> None:
            for i in range(count):
                enqueued[f"{prefix}{i}"] = time.time()
                await emit(redis, settings, transition(f"{prefix}{i}", "captured"))
                await asyncio.sleep(0.05)

        async def fast_done() -> bool:
            return sum(r.json["data"]["id"].startswith(prefix) for r in fast.requests) >= count

        feeder = asyncio.create_task(feed())
        await run_until(make_worker(settings, max_jobs=10, burst=False), fast_done, timeout_s=60)
        await feeder
        return [
            r.at - enqueued[r.json["data"]["id"]]
            for r in fast.requests
            if r.json["data"]["id"].startswith(prefix)
        ]

    async with serve_app(fast.app()) as fast_url, serve_app(slow.app()) as slow_url:
        store = SubscriberStore(redis)
        await store.put(subscriber("fast", fast_url))
        baseline = await measure("alone")
        await store.put(subscriber("slow", slow_url, concurrency=2))
        beside_slow = await measure("beside")
    assert slow.requests, "the slow subscriber was called"
    base_median, slow_median = statistics.median(baseline), statistics.median(beside_slow)
    print(
        f"fast subscriber latency: alone median {base_median * 1000:.1f} ms "
        f"max {max(baseline) * 1000:.1f} ms; beside a 5 s subscriber median "
        f"{slow_median * 1000:.1f} ms max {max(beside_slow) * 1000:.1f} ms"
    )
    assert max(beside_slow) < 1.0
    assert slow_median < base_median + 0.1
