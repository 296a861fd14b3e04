"""A subscriber that is down for several breaker cycles, with a real arq worker: its parked lines
cost a few jobs per cycle (one wake job, the probe), not one per line; another subscriber keeps
receiving meanwhile; on recovery every transition arrives, in lifecycle order per payment.
Then the same through a SIGKILL of the worker sending the probe (real `kartahook worker`
processes): the next worker carries the cycle on and no parked delivery is forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from arq.worker import Worker

from service.store.layout import (
    ARQ_IN_PROGRESS_PREFIX,
    breaker_key,
    dead_key,
    waiting_key,
    wake_job_id,
)
from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    SEQ,
    Recorder,
    emit,
    make_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import exit_code, serve_app, start_kartahook, wait_for

DOWN, OTHER = "down", "other"
STEPS = ["pending", "submitted", "approved"]
DOWN_EVENTS = [f"payment.{status}" for status in STEPS]
PAYMENTS = 30
CAP = 2
CYCLES = 3
# Jobs of the down subscriber allowed per breaker cycle: its wake job (which sends the probe),
# the failed probe's retry job (which parks it again), and a spare (a recheck).
JOBS_PER_CYCLE_MAX = 4


class Flaky:
    """Answers 500 while ``down`` is set, else 200; records every request."""

    def __init__(self) -> None:
        self.down = True
        self.recorder = Recorder(lambda _n, _b: (500 if self.down else 200, {}, 0.0))


def outage_settings(redis_url: str) -> Any:
    # Retries every 0.1 s for an hour: every delivery stays pending through the outage.
    return settings_for(
        redis_url,
        delivery_retry_schedule_s=["0.05"],
        delivery_retry_repeat_s=0.1,
        delivery_retry_horizon_s=3600,
        delivery_breaker_failures=3,
        delivery_breaker_cooldown_s=1.0,
    )


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    """Run ``worker`` in the background for the block; then let its jobs end and close it."""
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pending = [job for job in worker.tasks.values() if not job.done()]
        if pending:
            await asyncio.wait(pending, timeout=30)
        await worker.close()


def in_order(recorder: Recorder) -> dict[str, list[int]]:
    """The seq of each payment's transitions, in the order they first arrived delivered."""
    seen: set[str] = set()
    lines: dict[str, list[int]] = defaultdict(list)
    for request in recorder.delivered():
        webhook_id = request.headers["webhook-id"]
        if webhook_id in seen:
            continue
        seen.add(webhook_id)
        body = request.json
        lines[body["data"]["id"]].append(SEQ[body["type"].split(".", 1)[1]])
    return lines


async def down_jobs_queued(redis: aioredis.Redis, queue: str) -> int:
    """How many jobs of the down subscriber (deliveries and wake jobs) the queue holds."""
    members = await redis.zrange(queue, 0, -1)
    return sum(1 for m in members if m.decode().split(":")[1:2] == [DOWN])


async def down_jobs_due(redis: aioredis.Redis, queue: str) -> int:
    """How many jobs of the down subscriber are due (their time has come) in the queue."""
    seconds, micros = await redis.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    members = await redis.zrangebyscore(queue, "-inf", now)
    return sum(1 for m in members if m.decode().split(":")[1:2] == [DOWN])


async def test_parked_lines_cost_a_few_jobs_per_breaker_cycle_then_arrive_in_order(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """30 lines parked behind an open breaker cost at most a few jobs per cycle (counted as the
    worker starts them, and in the queue); the other subscriber gets its new transitions during
    the outage; after recovery all 90 transitions arrive, in order per payment, none dead, with
    never more than about twice the cap of jobs due at once."""
    settings = outage_settings(redis_url)
    queue = settings.queue_name
    flaky, other = Flaky(), Recorder()
    started: list[str] = []
    worker = make_worker(settings, max_jobs=10, burst=False, started_jobs=started)
    async with serve_app(flaky.recorder.app()) as down_url, serve_app(other.app()) as other_url:
        store = SubscriberStore(redis)
        await store.put(subscriber(DOWN, down_url, concurrency=CAP, events=DOWN_EVENTS))
        await store.put(subscriber(OTHER, other_url))
        for status in STEPS:
            for n in range(PAYMENTS):
                await emit(redis, settings, transition(f"pay_{n}", status))
        async with running(worker):

            async def all_parked() -> bool:
                parked = await redis.zcard(waiting_key(DOWN))
                return bool(parked == PAYMENTS and len(other.ids()) == PAYMENTS * len(STEPS))

            await wait_for(all_parked, timeout_s=60)

            def down_started() -> int:
                return sum(1 for job in started if job.split(":")[1:2] == [DOWN])

            # Each value of the breaker's open_until is one cycle; the first (partial) one is
            # skipped.
            per_cycle: list[int] = []
            most_queued = 0
            opened = await redis.hget(breaker_key(DOWN), "open_until")
            mark = None
            while len(per_cycle) < CYCLES:

                async def next_cycle(before: Any = opened) -> bool:
                    nonlocal most_queued
                    most_queued = max(most_queued, await down_jobs_queued(redis, queue))
                    return bool(await redis.hget(breaker_key(DOWN), "open_until") != before)

                await wait_for(next_cycle, timeout_s=30, interval_s=0.01)
                opened = await redis.hget(breaker_key(DOWN), "open_until")
                if mark is not None:
                    per_cycle.append(down_started() - mark)
                mark = down_started()
                # The cycle's one wake job is queued, under its deterministic id.
                open_until = int(opened or 0)
                assert await redis.zscore(queue, wake_job_id(DOWN, open_until)) is not None

            # Meanwhile the other subscriber is served at once (only it wants payment.captured).
            for n in range(5):
                await emit(redis, settings, transition(f"pay_{n}", "captured"))

            async def other_served() -> bool:
                return len(other.ids()) == PAYMENTS * len(STEPS) + 5

            await wait_for(other_served, timeout_s=30)
            still_parked = await redis.zcard(waiting_key(DOWN))
            print(f"jobs per breaker cycle {per_cycle}; at most {most_queued} queued")
            flaky.down = False

            most_due = 0

            async def recovered() -> bool:
                nonlocal most_due
                most_due = max(most_due, await down_jobs_due(redis, queue))
                return len(set(flaky.recorder.ids())) == PAYMENTS * len(STEPS)

            await wait_for(recovered, timeout_s=120, interval_s=0.01)
            print(f"recovering: at most {most_due} jobs due at once")
    assert max(per_cycle) <= JOBS_PER_CYCLE_MAX, per_cycle
    assert most_queued <= JOBS_PER_CYCLE_MAX, most_queued
    # Released at the cap's rate: the woken (each holding a slot) and the lines' next ones.
    assert most_due <= 2 * CAP + 2, most_due
    assert still_parked >= PAYMENTS - 1  # the other's deliveries went while the lines waited
    lines = in_order(flaky.recorder)
    assert len(lines) == PAYMENTS
    assert all(seqs == [SEQ[s] for s in STEPS] for seqs in lines.values()), lines
    assert await redis.zcard(dead_key(DOWN)) == 0
    assert len(set(other.ids())) == PAYMENTS * len(STEPS) + 5


def start_worker(redis_url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_DELIVERY_TIMEOUT_S": "10",
        "KARTAHOOK_DELIVERY_RETRY_SCHEDULE_S": "0.05",
        "KARTAHOOK_DELIVERY_RETRY_REPEAT_S": "0.1",
        "KARTAHOOK_DELIVERY_RETRY_HORIZON_S": "3600",
        "KARTAHOOK_DELIVERY_BREAKER_FAILURES": "3",
        "KARTAHOOK_DELIVERY_BREAKER_COOLDOWN_S": "1",
        "KARTAHOOK_WORKER_LEASE_S": "2",
    }
    return start_kartahook(["worker", *extra], env, log)


async def test_worker_killed_while_its_wake_job_sends_the_probe(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while the wake job's probe hangs: the next worker runs the wake job again after
    its lease, the breaker cycle goes on, and every parked transition arrives, in order."""
    hang = asyncio.Event()

    def behaviour(n: int, _body: dict[str, Any]) -> tuple[int, dict[str, str], float]:
        if hang.is_set():
            return 200, {}, 0.0
        if n <= 3:
            return 500, {}, 0.0
        return 200, {}, 8.0  # the probe: hangs until the worker is killed

    recorder = Recorder(behaviour)
    payments = [f"pay_{n}" for n in range(6)]
    log = tmp_path / "worker.log"
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber(DOWN, base, concurrency=1))
        settings = outage_settings(redis_url)
        for status in STEPS:
            for payment in payments:
                await emit(redis, settings, transition(payment, status))
        first = start_worker(redis_url, log)
        try:

            async def probe_in_flight() -> bool:
                return len(recorder.requests) == 4

            await wait_for(probe_in_flight, timeout_s=60)
            running_jobs = [
                key.decode()[len(ARQ_IN_PROGRESS_PREFIX) :]
                async for key in redis.scan_iter(match=ARQ_IN_PROGRESS_PREFIX + "*")
            ]
            probe = (await redis.hget(breaker_key(DOWN), "probe") or b"").decode()
        finally:
            first.kill()
            first.wait()
        hang.set()
        # The job sending the probe was the cycle's wake job.
        assert [job for job in running_jobs if job.startswith("fwk:")], running_jobs
        assert probe.startswith("fdl:")
        second = start_worker(redis_url, log, "--burst")
        assert await exit_code(second, 120) == 0, log.read_text()[-3000:]
    lines = in_order(recorder)
    assert sorted(lines) == payments
    assert all(seqs == [SEQ[s] for s in STEPS] for seqs in lines.values()), lines
    cut = recorder.requests[3].headers["webhook-id"]
    assert cut in recorder.ids()  # the cut probe's delivery was sent again, and arrived
    assert await redis.zcard(waiting_key(DOWN)) == 0
    assert await redis.zcard(dead_key(DOWN)) == 0
