"""The worker's typed context: one WorkerContext under one ctx key, with its transport seams."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.settings import Settings
from service.store.layout import PROCESS_EVENT
from service.store.subscribers import Subscriber, SubscriberStore
from tests.support import arq_pool
from workers.context import CTX_KEY, WorkerContext
from workers.delivery import FanoutHandoff
from workers.main import build_worker

COMPLETED: dict[str, Any] = {
    "status": "completed",
    "purchase": {"total": {"value": "10", "currency": "EUR"}},
    "createdAt": "2026-01-01T00:00:00.000Z",
    "submittedAt": "2026-01-01T00:00:01.000Z",
    "approvedAt": "2026-01-01T00:00:02.000Z",
    "capturedAt": "2026-01-01T00:00:03.000Z",
    "completedAt": "2026-01-01T00:00:04.000Z",
}


async def test_worker_runs_on_its_context_and_its_transport_seams(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """build_worker's transports reach the KartaPay client and the deliveries; on_startup fills
    the one WorkerContext (processing handed to delivery through FanoutHandoff); on_shutdown
    empties it."""
    fetched: list[str] = []
    delivered: list[dict[str, Any]] = []

    def kartapay(request: httpx.Request) -> httpx.Response:
        fetched.append(request.url.path)
        return httpx.Response(200, json=COMPLETED)

    def subscriber(request: httpx.Request) -> httpx.Response:
        delivered.append(orjson.loads(request.content))
        # A stream, not content: delivery reads the answer's head with aiter_raw().
        return httpx.Response(204, stream=httpx.ByteStream(b""))

    await SubscriberStore(redis).put(Subscriber(id="ledger", url="http://ledger.test/hook"))
    settings = Settings(
        redis_url=redis_url,
        kartapay_url="http://kartapay.test",
        subscriber_allowlist=["ledger.test"],  # the worker re-checks it before each send
    )
    worker = build_worker(
        settings,
        burst=True,
        handle_signals=False,
        poll_delay=0.01,
        kartapay_transport=httpx.MockTransport(kartapay),
        delivery_transport=httpx.MockTransport(subscriber),
    )
    context = worker.ctx[CTX_KEY]
    assert isinstance(context, WorkerContext)
    assert set(worker.ctx) == {CTX_KEY}
    async with arq_pool(redis_url) as pool:
        hint = EventHint("kartapay", "evt_1", "pay_1", int(time.time() * 1000))
        await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=uuid.uuid4().hex)
    try:
        await worker.main()
        assert context.processor is not None and context.fanout is not None
        assert isinstance(context.deliveries, FanoutHandoff)
        assert context.subscribers is context.fanout.subscribers
    finally:
        await worker.close()
    assert fetched == ["/v1/payments/pay_1"]
    assert [d["type"] for d in delivered] == [
        "payment.submitted",
        "payment.approved",
        "payment.captured",
        "payment.completed",
    ]
    assert context.fanout is None and context.deliveries is None and context.kartapay is None
