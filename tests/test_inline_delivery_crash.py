"""A worker killed while its processing job sends the deliveries it has just created: their
jobs, held back by the lease, deliver them (real `kartahook worker` processes, the sandbox, a
real subscriber on 127.0.0.1, a real Redis)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis

from sandbox.kartapay_api import SandboxConfig, create_app
from service.jobs import PROCESS_EVENT, EventHint, transition_id
from service.kartapay.client import KartaPayClient
from service.subscribers import SubscriberStore
from tests.fanout_support import Recorder, subscriber
from tests.support import arq_pool, completed_payments, serve_app, start_kartahook, wait_for

TOKEN = "test-token"
STEPS = ["submitted", "approved", "captured", "completed"]


def start_worker(
    redis_url: str, kartapay_url: str, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_KARTAPAY_URL": kartapay_url,
        "KARTAHOOK_KARTAPAY_TOKEN": TOKEN,
        "KARTAHOOK_DELIVERY_TIMEOUT_S": "2",  # lease: 22 s
        "KARTAHOOK_WORKER_JOB_TIMEOUT_S": "12",  # inline sends while 5 s are left
    }
    return start_kartahook(["worker", *extra], env, log)


async def test_sigkill_during_inline_sends_is_recovered_by_the_held_jobs(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while the processing job's second send hangs; a new worker delivers every step
    after the lease, in order, the cut one again with the same webhook-id."""
    recorder = Recorder(lambda n, _b: (200, {}, 10.0 if n == 2 else 0.0))
    log = tmp_path / "worker.log"
    async with (
        serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01))) as sandbox_url,
        serve_app(recorder.app()) as base,
    ):
        async with KartaPayClient(sandbox_url, TOKEN) as client:
            [payment_id] = await completed_payments(client)
        ids = [transition_id(payment_id, status) for status in STEPS]
        await SubscriberStore(redis).put(subscriber("ledger", base))
        hint = EventHint("kartapay", "evt-inline", payment_id, int(time.time() * 1000))
        async with arq_pool(redis_url) as pool:
            await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=hint.job_id)
        first = start_worker(redis_url, sandbox_url, log)
        try:

            async def second_in_flight() -> bool:
                return len(recorder.requests) == 2

            await wait_for(second_in_flight, timeout_s=30)
            # Sent by the processing job itself: the second step's own job waits the lease.
            queued = await redis.zrange("arq:queue", 0, -1, withscores=True)
            held = {job.decode(): score for job, score in queued if job.startswith(b"fdl:")}
            assert list(held) == [f"fdl:ledger:{ids[1]}:1"], held
            assert min(held.values()) > time.time() * 1000 + 15_000
        finally:
            first.kill()
            first.wait()
        second = start_worker(redis_url, sandbox_url, log, "--burst")
        try:
            await asyncio.to_thread(second.wait, 90)
        finally:
            if second.poll() is None:
                second.kill()
        assert second.returncode == 0, log.read_text()[-3000:]
    sent = [r.headers["webhook-id"] for r in recorder.requests]
    assert list(dict.fromkeys(sent)) == ids
    assert set(recorder.ids()) == set(ids)
    assert sent.count(ids[1]) == 2  # the cut attempt, then its held job's
    assert [s for s in sent if s != ids[1]] == [ids[0], ids[2], ids[3]]
