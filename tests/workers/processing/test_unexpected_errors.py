"""An unexpected exception in the processing job is logged with its traceback and counted
before arq retries it (issue 12, item 6), from a real burst worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from service.domain.events import EventHint
from service.settings import Settings
from service.store.layout import PROCESS_EVENT
from tests.support import arq_pool
from workers.main import build_worker


class FailsOnceTransport(httpx.AsyncBaseTransport):
    """The KartaPay API seam: a bug (RuntimeError) on the first call, then 404s."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the handler")
        return httpx.Response(404, json={"error": "not found"})


def unexpected_count(job: str) -> float:
    value = REGISTRY.get_sample_value("kartahook_worker_unexpected_errors_total", {"job": job})
    return value or 0.0


async def run_one_job(
    redis_url: str, transport: FailsOnceTransport, event_id: str, payment_id: str
) -> list[dict[str, Any]]:
    """Queue one process_event job and run it (and its retries) with a burst worker whose
    KartaPay transport is ``transport``; the log entries it wrote."""
    settings = Settings(
        redis_url=redis_url,
        process_backoff_base_s=0.05,
        process_backoff_cap_s=0.2,
        process_not_found_tries=1,
        process_not_found_delay_s=0.05,
        worker_poll_delay_s=0.01,
    )
    hint = EventHint("kartapay", event_id, payment_id, int(time.time() * 1000))
    async with arq_pool(redis_url) as pool:
        await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=uuid.uuid4().hex)
    worker = build_worker(settings, burst=True, handle_signals=False, kartapay_transport=transport)
    with capture_logs() as entries:
        try:
            await worker.main()
        finally:
            await worker.close()
    return entries


async def test_unexpected_error_is_logged_with_traceback_and_counted_then_retried(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """process_event raising RuntimeError: error line with exc_info and ids, metric +1, retry."""
    transport = FailsOnceTransport()
    before = unexpected_count(PROCESS_EVENT)
    entries = await run_one_job(redis_url, transport, "evt_bug", "pay_bug")
    errors = [e for e in entries if e["event"] == "process_event_error"]
    assert len(errors) == 1
    [line] = errors
    assert line["log_level"] == "error" and line["exc_info"] is True
    assert (line["event_id"], line["payment_id"], line["error"]) == (
        "evt_bug",
        "pay_bug",
        "RuntimeError",
    )
    assert unexpected_count(PROCESS_EVENT) == before + 1
    assert transport.calls >= 2  # retried after the error


class RedisFailsOnceTransport(FailsOnceTransport):
    """The same seam raising a Redis error first, as a failover does mid-run."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            raise RedisConnectionError("primary gone")
        return httpx.Response(404, json={"error": "not found"})


async def test_redis_error_is_a_warning_without_traceback_then_retried(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A Redis error (outage, failover) is expected: a warning line, no traceback, not counted
    as unexpected, and the job runs again."""
    transport = RedisFailsOnceTransport()
    before = unexpected_count(PROCESS_EVENT)
    entries = await run_one_job(redis_url, transport, "evt_redis", "pay_redis")
    warnings = [e for e in entries if e["event"] == "process_event_redis_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning" and "exc_info" not in warnings[0]
    assert not [e for e in entries if e["event"] == "process_event_error"]
    assert unexpected_count(PROCESS_EVENT) == before
    assert transport.calls >= 2
