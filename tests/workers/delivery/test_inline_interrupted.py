"""The processing job sends the deliveries it has just created; a worker killed or stopped in
the middle loses nothing and sends nothing twice it need not (real `kartahook worker`
processes, the sandbox, a real subscriber on 127.0.0.1, a real Redis)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.events import EventHint, transition_id
from service.kartapay.client import KartaPayClient
from service.store.layout import PROCESS_EVENT, hint_job_id
from service.store.subscribers import SubscriberStore
from tests.delivery_support import Recorder, subscriber
from tests.support import (
    arq_pool,
    completed_payments,
    exit_code,
    serve_app,
    start_worker,
    wait_for,
)

TOKEN = "test-token"
STEPS = ["submitted", "approved", "captured", "completed"]


@contextlib.asynccontextmanager
async def hinted_payment(
    redis_url: str, redis: aioredis.Redis, recorder: Recorder
) -> AsyncIterator[tuple[str, list[str]]]:
    """A completed payment in a live sandbox with its hint queued, and ``recorder`` registered
    as subscriber ``ledger``: (the sandbox's URL, the payment's four webhook-ids in order)."""
    async with (
        serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01))) as sandbox_url,
        serve_app(recorder.app()) as base,
    ):
        async with KartaPayClient(sandbox_url, TOKEN) as client:
            [payment_id] = await completed_payments(client)
        await SubscriberStore(redis).put(subscriber("ledger", base))
        hint = EventHint("kartapay", f"evt-{payment_id}", payment_id, int(time.time() * 1000))
        async with arq_pool(redis_url) as pool:
            await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=hint_job_id(hint))
        yield sandbox_url, [transition_id(payment_id, status) for status in STEPS]


async def second_in_flight(recorder: Recorder) -> None:
    async def arrived() -> bool:
        return len(recorder.requests) == 2

    await wait_for(arrived, timeout_s=30)


async def test_sigkill_during_inline_sends_is_recovered_by_the_held_jobs(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while the processing job's second send hangs; a new worker delivers every step
    after the lease, in order, the cut one again with the same webhook-id."""
    recorder = Recorder(lambda n, _b: (200, {}, 10.0 if n == 2 else 0.0))
    log = tmp_path / "worker.log"
    # Delivery timeout 2 s: the lease is 22 s; job timeout 12 s: inline sends while 5 s are left.
    timeouts = {"delivery_timeout_s": "2", "worker_job_timeout_s": "12"}
    async with hinted_payment(redis_url, redis, recorder) as (sandbox_url, ids):
        first = start_worker(redis_url, sandbox_url, TOKEN, log, **timeouts)
        try:
            await second_in_flight(recorder)
            # Sent by the processing job itself: the second step's own job waits the lease.
            queued = await redis.zrange("arq:queue", 0, -1, withscores=True)
            held = {job.decode(): score for job, score in queued if job.startswith(b"fdl:")}
            assert list(held) == [f"fdl:ledger:{ids[1]}:1"], held
            assert min(held.values()) > time.time() * 1000 + 15_000
        finally:
            first.kill()
            first.wait()
        second = start_worker(redis_url, sandbox_url, TOKEN, log, "--burst", **timeouts)
        assert await exit_code(second, 90) == 0, log.read_text()[-3000:]
    sent = [r.headers["webhook-id"] for r in recorder.requests]
    assert list(dict.fromkeys(sent)) == ids
    assert set(recorder.ids()) == set(ids)
    assert sent.count(ids[1]) == 2  # the cut attempt, then its held job's
    assert [s for s in sent if s != ids[1]] == [ids[0], ids[2], ids[3]]


async def test_sigterm_mid_chain_finishes_the_attempt_and_chains_no_more(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGTERM while the processing job sends a payment's steps: the attempt in flight
    completes, no further one starts in that worker, and the next worker sends the rest, each
    once, in order."""
    recorder = Recorder(lambda n, _b: (200, {}, 1.5 if n == 2 else 0.0))
    log = tmp_path / "worker.log"
    async with hinted_payment(redis_url, redis, recorder) as (sandbox_url, ids):
        worker = start_worker(redis_url, sandbox_url, TOKEN, log)
        try:
            await second_in_flight(recorder)
            worker.send_signal(signal.SIGTERM)
            code = await exit_code(worker, 30)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert code == 0, log.read_text()[-2000:]
        assert [r.status for r in recorder.requests] == [200, 200]  # none cut, none begun
        second = start_worker(redis_url, sandbox_url, TOKEN, log, "--burst")
        assert await exit_code(second, 60) == 0, log.read_text()[-2000:]
    assert [r.headers["webhook-id"] for r in recorder.requests] == ids
