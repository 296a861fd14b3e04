"""A worker killed in the middle of a chain of deliveries: the chained delivery's own job, kept
queued as a safety net, delivers it after the lease (real `kartahook worker` processes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from service.store.subscribers import SubscriberStore
from tests.delivery_support import Recorder, emit, settings_for, subscriber, transition
from tests.support import exit_code, serve_app, start_kartahook, wait_for

STEPS = ["submitted", "approved", "captured", "completed"]


def start_worker(redis_url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_DELIVERY_TIMEOUT_S": "1",
        "KARTAHOOK_WORKER_JOB_TIMEOUT_S": "3",
    }
    return start_kartahook(["worker", *extra], env, log)


async def test_chain_cut_by_sigkill_is_finished_by_the_safety_job(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while a chained delivery hangs; a new worker delivers the rest, in order."""
    recorder = Recorder(lambda n, _b: (200, {}, 5.0 if n == 2 else 0.0))
    items = [transition("pay_1", status) for status in STEPS]
    log = tmp_path / "worker.log"
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        for item in items:
            await emit(redis, settings_for(redis_url), item)
        first = start_worker(redis_url, log)
        try:

            async def second_in_flight() -> bool:
                return len(recorder.requests) == 2

            await wait_for(second_in_flight, timeout_s=30)
        finally:
            first.kill()
            first.wait()
        second = start_worker(redis_url, log, "--burst")
        assert await exit_code(second, 90) == 0, log.read_text()[-3000:]
    ids = [r.headers["webhook-id"] for r in recorder.requests]
    first_arrivals = list(dict.fromkeys(ids))
    assert first_arrivals == [item.id for item in items]
    assert set(recorder.ids()) == {item.id for item in items}
    assert ids.count(items[1].id) == 2  # the cut attempt, then the safety job's
