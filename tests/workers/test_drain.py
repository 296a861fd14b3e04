"""Real processes under SIGTERM and with several server processes: the worker drains the job
in flight before it exits, and `kartahook serve --workers 2` accepts webhooks and aggregates
its metrics. (SIGTERM during deliveries: tests/test_inline_delivery_interrupted.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.events import EventHint
from service.domain.signing import generate_secret, sign_headers
from service.kartapay.client import KartaPayClient
from service.settings import Settings
from service.store.jobs import deserialize, serialize
from service.store.layout import (
    PROCESS_EVENT,
    health_check_key,
    hint_job_id,
    payment_lock_key,
)
from service.store.payments import TRANSITIONS_LOG_KEY
from service.store.server import RedisServer, free_port
from tests.support import (
    completed_payments,
    exit_code,
    serve_app,
    start_kartahook,
    start_worker,
    wait_for,
)

TOKEN = "drain-token"


async def test_sigterm_lets_the_job_in_flight_finish(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGTERM during a slow fetch: the job completes (transitions emitted), then exit 0."""
    async with serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01))) as url:
        async with KartaPayClient(url, TOKEN) as client:
            [payment_id] = await completed_payments(client)
        async with httpx.AsyncClient(base_url=url) as control:
            await control.post("/_sandbox/faults", json={"latency_s": 2.0})
        pool = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
        )
        try:
            hint = EventHint("kartapay", uuid.uuid4().hex, payment_id, int(time.time() * 1000))
            await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=hint_job_id(hint))
        finally:
            await pool.aclose()
        log = tmp_path / "worker.log"
        worker = start_worker(redis_url, url, TOKEN, log)
        try:

            async def fetching() -> bool:
                return bool(await redis.exists(payment_lock_key(payment_id)))

            await wait_for(fetching, timeout_s=20)
            worker.send_signal(signal.SIGTERM)
            code = await exit_code(worker, 30)
        finally:
            if worker.poll() is None:
                worker.kill()
    assert code == 0, log.read_text()[-2000:]
    assert await redis.xlen(TRANSITIONS_LOG_KEY) == 4, log.read_text()[-2000:]


async def test_serve_with_two_processes_accepts_and_aggregates_metrics(
    redis_url: str, tmp_path: Path
) -> None:
    """`serve --workers 2` answers 202 to signed webhooks; /metrics counts them all; its
    metrics directory is gone after SIGTERM."""
    secret = generate_secret()
    sources = tmp_path / "sources.yaml"
    sources.write_text('sources:\n  kartapay: {secrets: ["${KP_SECRET}"]}\n')
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_ADMIN_PORT": str(admin_port),
        "KARTAHOOK_SOURCES_FILE": str(sources),
        "KP_SECRET": secret,
        "TMPDIR": str(tmp_path),
    }
    log = tmp_path / "serve.log"
    server = start_kartahook(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env, log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout_s=30)
            for n in range(20):
                body = orjson.dumps({"type": "payment.captured", "data": {"id": f"pay_{n}"}})
                headers = sign_headers(secret, f"evt_{n}", body)
                headers["content-type"] = "application/json"
                answer = await http.post("/v1/webhooks/kartapay", content=body, headers=headers)
                assert answer.status_code == 202, answer.text
            text = (await http.get(f"http://127.0.0.1:{admin_port}/metrics")).text
    finally:
        server.send_signal(signal.SIGTERM)
        await exit_code(server, 30)
    accepted = [
        line
        for line in text.splitlines()
        if line.startswith("kartahook_webhooks_total") and 'outcome="accepted"' in line
    ]
    assert accepted and float(accepted[0].rsplit(" ", 1)[1]) == 20.0, text[:2000]
    assert server.returncode is not None
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("kartahook-metrics-*")))


@pytest.mark.parametrize("how", ["stalled", "down"])
async def test_sigterm_ends_the_worker_while_redis_is_stalled_or_down(
    tmp_path: Path, own_redis: RedisServer, how: str
) -> None:
    """SIGTERM while Redis stops answering (SIGSTOP: a partition, a failover's old primary),
    and while it is down: the worker exits 0 within its bounded close, logging what it could
    not do, instead of hanging on a socket that never answers."""
    server = own_redis
    assert server.process is not None
    log = tmp_path / "worker.log"
    worker = start_worker(server.url, "http://127.0.0.1:9", TOKEN, log)
    client = aioredis.from_url(server.url)
    try:

        async def polling() -> bool:  # arq writes its health-check key on its first poll
            return bool(await client.exists(health_check_key(Settings().queue_name)))

        await wait_for(polling, timeout_s=30)
        await client.aclose()
        if how == "stalled":
            os.kill(server.process.pid, signal.SIGSTOP)
        else:
            server.stop()
        await asyncio.sleep(0.5)  # the worker is now inside a call Redis does not answer
        worker.send_signal(signal.SIGTERM)
        code = await exit_code(worker, 60)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "worker_close_redis_unavailable" in text, text[-2000:]
