"""Processing against the live sandbox, a real Redis and real arq workers (issue 4)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.events import EventHint
from service.kartapay.client import KartaPayClient
from service.settings import Settings
from service.store.dead_letters import EventDeadLetters
from service.store.layout import PROCESS_EVENT
from service.store.subscribers import Subscriber, SubscriberStore
from tests.support import arq_pool, completed_payments, serve_app, wait_for
from workers.main import build_worker

TOKEN = "test-token"
FULL_PATH = ["submitted", "approved", "captured", "completed"]


def settings_for(redis_url: str, kartapay_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "kartapay_url": kartapay_url,
        "kartapay_token": TOKEN,
        "process_backoff_base_s": 0.05,
        "process_backoff_cap_s": 2.0,
        "process_not_found_tries": 3,
        "process_not_found_delay_s": 0.05,
        "worker_poll_delay_s": 0.01,
    }
    values.update(extra)
    return Settings(**values)


class Deliveries:
    """A subscriber that records (payment id, status) of each delivery, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.json()
            self.seen.append((body["data"]["id"], body["type"].removeprefix("payment.")))
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def statuses(self, payment_id: str) -> list[str]:
        return [status for pid, status in self.seen if pid == payment_id]


@pytest.fixture
async def deliveries(redis: aioredis.Redis) -> AsyncIterator[Deliveries]:
    """A live subscriber on 127.0.0.1, registered for every event."""
    recorder = Deliveries()
    async with serve_app(recorder.app()) as url:
        await SubscriberStore(redis).put(Subscriber(id="ledger", url=f"{url}/hook"))
        yield recorder


def make_worker(settings: Settings, burst: bool = True) -> Worker:
    """The worker as ``kartahook worker`` builds it: processing and delivery."""
    return build_worker(settings, burst=burst, handle_signals=False)


async def run_burst(settings: Settings) -> None:
    worker = make_worker(settings)
    try:
        await worker.main()
    finally:
        await worker.close()


async def enqueue_hint(pool: ArqRedis, payment_id: str, event_id: str | None = None) -> None:
    hint = EventHint("kartapay", event_id or uuid.uuid4().hex, payment_id, int(time.time() * 1000))
    await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=uuid.uuid4().hex)


async def completed_payment(client: KartaPayClient) -> str:
    [payment_id] = await completed_payments(client)
    return payment_id


@pytest.fixture
async def sandbox_url() -> AsyncIterator[str]:
    """A live sandbox on 127.0.0.1 that sends no webhooks."""
    async with serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.02))) as url:
        yield url


async def test_only_completed_webhook_still_emits_every_step(
    deliveries: Deliveries, redis_url: str, sandbox_url: str
) -> None:
    """One hint for a completed payment emits submitted, approved, captured, completed in order."""
    settings = settings_for(redis_url, sandbox_url)
    async with KartaPayClient(sandbox_url, TOKEN) as client, arq_pool(redis_url) as pool:
        payment_id = await completed_payment(client)
        await enqueue_hint(pool, payment_id)
        await run_burst(settings)
    assert deliveries.statuses(payment_id) == FULL_PATH


async def test_twenty_concurrent_jobs_emit_each_transition_once(
    deliveries: Deliveries, redis_url: str, sandbox_url: str
) -> None:
    """20 jobs for one payment at once emit each transition exactly once, in order."""
    settings = settings_for(redis_url, sandbox_url, worker_max_jobs=20)
    async with KartaPayClient(sandbox_url, TOKEN) as client, arq_pool(redis_url) as pool:
        payment_id = await completed_payment(client)
        for _ in range(20):
            await enqueue_hint(pool, payment_id)
        await run_burst(settings)
    assert deliveries.statuses(payment_id) == FULL_PATH


async def test_duplicate_and_out_of_order_webhooks_give_each_step_once(
    deliveries: Deliveries, redis_url: str
) -> None:
    """With every webhook sent twice and shuffled, each payment still gets each step once, in
    order, while the worker runs concurrently with the lifecycle."""
    async with arq_pool(redis_url) as pool:

        async def receive(request: Request) -> Response:
            body = await request.json()
            await enqueue_hint(pool, body["data"]["id"], request.headers["webhook-id"])
            return JSONResponse({"ok": True}, status_code=202)

        receiver = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
        async with serve_app(receiver) as receiver_url:
            config = SandboxConfig(
                token=TOKEN,
                step_delay_s=0.05,
                webhook_url=f"{receiver_url}/hook",
                webhook_secret="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                duplicate_webhooks=True,
                out_of_order_webhooks=True,
                out_of_order_window_s=0.2,
            )
            async with serve_app(create_app(config)) as url:
                settings = settings_for(redis_url, url)
                worker = make_worker(settings, burst=False)
                task = asyncio.create_task(worker.async_run())
                try:
                    async with KartaPayClient(url, TOKEN) as client:
                        ids = [await completed_payment(client) for _ in range(5)]

                        async def all_emitted() -> bool:
                            return all(deliveries.statuses(p) == FULL_PATH for p in ids)

                        await wait_for(all_emitted, timeout_s=20)
                        await asyncio.sleep(0.5)  # let any late duplicate hint be processed
                        assert await pool.zcard(settings.queue_name) == 0
                finally:
                    task.cancel()
                    await worker.close()
    for payment_id in ids:
        assert deliveries.statuses(payment_id) == FULL_PATH


async def test_injected_500s_and_429s_end_processed_and_honour_retry_after(
    deliveries: Deliveries,
    redis_url: str,
) -> None:
    """With 30% 500s and 20% 429s every event ends processed; 429 retries wait Retry-After."""
    # 20 events (about 40 fetches) and a seeded sandbox, so that some fetches do meet a 429.
    config = SandboxConfig(token=TOKEN, step_delay_s=0.02, seed=7)
    async with (
        serve_app(create_app(config)) as sandbox_url,
        KartaPayClient(sandbox_url, TOKEN) as client,
        arq_pool(redis_url) as pool,
    ):
        settings = settings_for(redis_url, sandbox_url, worker_max_jobs=20)
        ids = await completed_payments(client, 20)
        async with httpx.AsyncClient(base_url=sandbox_url) as control:
            response = await control.post(
                "/_sandbox/faults",
                json={"error_500_ratio": 0.3, "error_429_ratio": 0.2, "retry_after_s": 1},
            )
            assert response.status_code == 200
        for payment_id in ids:
            await enqueue_hint(pool, payment_id)
        with capture_logs() as logs:
            await run_burst(settings)
        assert await EventDeadLetters(pool).count() == 0
    for payment_id in ids:
        assert deliveries.statuses(payment_id) == FULL_PATH
    retries = [e for e in logs if e["event"] == "event_processed" and e["outcome"] == "retry"]
    assert retries, "with half the fetches failing, some runs must have been retried"
    limited = [e for e in retries if e["reason"].startswith("RateLimitedError")]
    assert limited and all(e["retry_in_s"] >= 1.0 for e in limited)


async def test_not_found_dead_letters_then_retry_succeeds(
    deliveries: Deliveries, redis_url: str, sandbox_url: str
) -> None:
    """A payment the API does not know yet is dead-lettered after the configured tries; retrying
    the dead letter once the API knows it emits every step."""
    hidden = {"on": True}

    async def proxy(request: Request) -> Response:
        if hidden["on"]:
            return JSONResponse({"message": "Not Found", "statusCode": 404}, status_code=404)
        async with httpx.AsyncClient(base_url=sandbox_url) as upstream:
            answer = await upstream.get(
                request.url.path, headers={"authorization": request.headers["authorization"]}
            )
        return Response(answer.content, answer.status_code, media_type="application/json")

    front = Starlette(routes=[Route("/v1/payments/{id}", proxy, methods=["GET"])])
    async with (
        serve_app(front) as front_url,
        KartaPayClient(sandbox_url, TOKEN) as client,
        arq_pool(redis_url) as pool,
    ):
        settings = settings_for(redis_url, front_url)
        payment_id = await completed_payment(client)
        await enqueue_hint(pool, payment_id)
        with capture_logs() as logs:
            await run_burst(settings)
        runs = [e for e in logs if e["event"] == "event_processed"]
        assert [e["outcome"] for e in runs] == ["retry", "retry", "dead_lettered"]
        dead = EventDeadLetters(pool)
        [entry] = await dead.entries()
        assert entry["reason"] == "not_found"
        assert deliveries.seen == []

        hidden["on"] = False
        assert await dead.retry(entry["id"])
        await run_burst(settings)
        assert await dead.count() == 0
    assert deliveries.statuses(payment_id) == FULL_PATH
