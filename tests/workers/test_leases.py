"""The worker's heartbeat (``ResilientWorker``): arq's in-progress key of a running job is a short
lease renewed while the job runs, so a long job is never run twice by a second worker, while the
lease is all a dead worker holds; the leases its runs hold are renewed with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from arq.worker import func

from service.settings import Settings
from service.store.jobs import deserialize, serialize
from service.store.layout import arq_in_progress_key, payment_lock_key
from service.store.leases import Leases
from tests.support import arq_pool, wait_for
from workers.context import CTX_KEY, WorkerContext
from workers.main import ResilientWorker

LEASE_S = 1.0


def worker(redis_url: str, runs: list[str], job_s: float, **options: Any) -> ResilientWorker:
    """A worker with a 1 s lease and one function ``slow`` that sleeps ``job_s``."""

    async def slow(ctx: dict[str, Any]) -> None:
        runs.append(str(ctx["job_id"]))
        await asyncio.sleep(job_s)

    return ResilientWorker(
        redis_url=redis_url,
        lease_s=LEASE_S,
        functions=[func(slow, name="slow", timeout=60)],
        job_serializer=serialize,
        job_deserializer=deserialize,
        poll_delay=0.02,
        keep_result=0,
        handle_signals=False,
        **options,
    )


@contextlib.asynccontextmanager
async def running(w: ResilientWorker) -> AsyncIterator[ResilientWorker]:
    task = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await w.close()


async def test_in_progress_key_is_a_lease_renewed_while_the_job_runs(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A job running 4 leases long keeps its in-progress key (TTL at most one lease) and is not
    started by a second worker meanwhile."""
    runs: list[str] = []
    async with arq_pool(redis_url) as pool:
        await pool.enqueue_job("slow", _job_id="job-1")
    async with (
        running(worker(redis_url, runs, 4 * LEASE_S)),
        running(worker(redis_url, runs, 4 * LEASE_S)),
    ):

        async def started() -> bool:
            return runs == ["job-1"]

        await wait_for(started, timeout_s=10)
        key = arq_in_progress_key("job-1")
        ttls = []
        for _ in range(5):
            await asyncio.sleep(LEASE_S / 2)
            ttls.append(int(await redis.pttl(key)))
        assert all(0 < ttl <= LEASE_S * 1000 for ttl in ttls), ttls

        async def finished() -> bool:
            return not await redis.exists(key)

        await wait_for(finished, timeout_s=10)
    assert runs == ["job-1"]


async def test_heartbeat_renews_held_locks_and_drops_lost_ones(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """The heartbeat keeps a held fetch lock alive beyond its lease; a lock another run took is
    marked lost and renewed no more."""
    w = worker(redis_url, [], 0)
    async with running(w):
        leases = Leases(redis, w.queue_name, int(LEASE_S * 1000))
        w.ctx[CTX_KEY] = WorkerContext(Settings(), leases=leases)
        await redis.set(payment_lock_key("pay_1"), "tok-a", px=int(LEASE_S * 1000))
        await redis.set(payment_lock_key("pay_2"), "tok-other", px=60_000)
        held = leases.hold_lock("pay_1", "tok-a")
        taken = leases.hold_lock("pay_2", "tok-b")
        await asyncio.sleep(3 * LEASE_S)
        assert await redis.get(payment_lock_key("pay_1")) == b"tok-a"
        assert 0 < int(await redis.pttl(payment_lock_key("pay_1"))) <= LEASE_S * 1000
        assert taken.lost and not held.lost
        assert leases.held() == [held]
