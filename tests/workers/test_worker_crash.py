"""A real `kartahook worker` process killed with SIGKILL mid-batch, then restarted (issue 4)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.events import EventHint
from service.kartapay.client import KartaPayClient
from service.store.dead_letters import EventDeadLetters
from service.store.jobs import deserialize, serialize
from service.store.layout import PROCESS_EVENT, hint_job_id
from service.store.payments import TRANSITIONS_LOG_KEY
from tests.support import completed_payments, exit_code, serve_app, start_worker, wait_for

TOKEN = "test-token"
PAYMENTS = 30
FULL_PATH = [b"submitted", b"approved", b"captured", b"completed"]


# Short timeouts, so the killed worker's jobs come back quickly.
SETTINGS = {
    "worker_job_timeout_s": "3",
    "delivery_timeout_s": "1",
    "worker_max_jobs": "8",
    "worker_poll_delay_s": "0.05",
    "process_backoff_base_s": "0.05",
}


async def test_sigkill_mid_batch_then_restart_processes_all_and_emits_once(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Every event is processed and every transition emitted exactly once across a SIGKILL."""
    config = SandboxConfig(token=TOKEN, step_delay_s=0.01)
    async with serve_app(create_app(config)) as sandbox_url:
        async with KartaPayClient(sandbox_url, TOKEN) as client:
            ids = await completed_payments(client, PAYMENTS)
        async with httpx.AsyncClient(base_url=sandbox_url) as control:
            await control.post("/_sandbox/faults", json={"latency_s": 0.15})
        pool = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
        )
        try:
            for payment_id in ids:
                for _ in range(2):
                    hint = EventHint(
                        "kartapay", uuid.uuid4().hex, payment_id, int(time.time() * 1000)
                    )
                    await pool.enqueue_job(
                        PROCESS_EVENT, hint.to_job_args()[0], _job_id=hint_job_id(hint)
                    )
        finally:
            await pool.aclose()

        log = tmp_path / "worker.log"
        first = start_worker(redis_url, sandbox_url, TOKEN, log, **SETTINGS)
        try:

            async def some_emitted() -> bool:
                return int(await redis.xlen(TRANSITIONS_LOG_KEY)) >= 20

            await wait_for(some_emitted, timeout_s=30)
        finally:
            first.kill()
            first.wait()
        emitted_before = int(await redis.xlen(TRANSITIONS_LOG_KEY))
        assert emitted_before < PAYMENTS * 4, "the kill must land mid-batch"

        second = start_worker(redis_url, sandbox_url, TOKEN, log, "--burst", **SETTINGS)
        assert await exit_code(second, 90) == 0, log.read_text()[-3000:]

    entries = await redis.xrange(TRANSITIONS_LOG_KEY)
    per_payment: dict[bytes, list[bytes]] = {}
    for _, fields in entries:
        per_payment.setdefault(fields[b"payment_id"], []).append(fields[b"status"])
    counts = Counter((pid, status) for pid, statuses in per_payment.items() for status in statuses)
    assert max(counts.values()) == 1, "a transition was emitted twice"
    assert {pid.decode() for pid in per_payment} == set(ids)
    assert all(statuses == FULL_PATH for statuses in per_payment.values())
    assert await EventDeadLetters(redis).count() == 0
