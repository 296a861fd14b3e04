"""The worker's probe server: /healthz, /readyz (Redis must answer) and /metrics, on a real port."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from service.settings import Settings
from service.store.server import RedisServer, free_port
from tests.support import wait_for
from workers.main import build_worker


async def test_probes_answer_and_readiness_follows_redis(tmp_path: Path) -> None:
    """/healthz and /metrics answer; /readyz is 503 while Redis is down; the worker outlives it."""
    redis = RedisServer(tmp_path, appendonly=False).start()
    port = free_port()
    settings = Settings(redis_url=redis.url, worker_metrics_port=port, worker_poll_delay_s=0.05)
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await wait_for(up, timeout_s=15)
            assert (await http.get("/readyz")).status_code == 200
            metrics = await http.get("/metrics")
            assert "kartahook_events_processed_total" in metrics.text
            redis.stop()
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            assert (await http.get("/healthz")).status_code == 200
            redis = RedisServer(tmp_path, port=redis.port, appendonly=False).start()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_for(ready, timeout_s=15)
            await asyncio.sleep(1.5)  # a poll or two against the restarted Redis
            assert not task.done(), "the worker must ride out the Redis outage"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
        redis.stop()
    with contextlib.suppress(httpx.TransportError), httpx.Client() as http:
        http.get(base + "/healthz", timeout=1)
        raise AssertionError("the probe server still answers after the worker closed")
