"""Fan-out end to end: real arq workers, real Redis, real subscribers on 127.0.0.1."""

from __future__ import annotations

import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from service.store.deliveries import DeliveryAdmin
from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    Recorder,
    emit,
    make_worker,
    run_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import serve_app


async def test_delivery_is_signed_and_verifies_with_standardwebhooks(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A delivery carries the documented body and headers and verifies with standardwebhooks."""
    settings = settings_for(redis_url)
    recorder = Recorder()
    async with serve_app(recorder.app()) as base:
        sub = subscriber("ledger", base, headers={"X-Team": "ledger"})
        await SubscriberStore(redis).put(sub)
        item = transition("pay_1", "captured")
        await emit(redis, settings, item)
        await run_worker(make_worker(settings))
    [request] = recorder.requests
    Webhook(sub.secret).verify(request.body, request.headers)
    assert request.headers["webhook-id"] == item.id
    assert request.headers["idempotency-key"] == item.id
    assert request.headers["x-team"] == "ledger"
    body = request.json
    assert body["id"] == item.id
    assert body["type"] == "payment.captured"
    assert body["timestamp"] == item.occurred_at
    assert body["data"]["id"] == "pay_1"
    assert body["data"]["amount"] == 1000
    attempts = await DeliveryAdmin(redis, settings.queue_name).attempts("ledger")
    assert [(a["status"], a["outcome"], a["attempt"]) for a in attempts] == [(200, "delivered", 1)]


async def test_recording_the_same_state_again_delivers_once(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A transition recorded three times (duplicate or late processing runs) gets one delivery."""
    settings = settings_for(redis_url)
    recorder = Recorder()
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        item = transition("pay_dup", "captured")
        assert await emit(redis, settings, item) == 1
        assert await emit(redis, settings, item) == 0
        await run_worker(make_worker(settings))
        assert await emit(redis, settings, item) == 0
        await run_worker(make_worker(settings))
    assert recorder.ids() == [item.id]


async def test_later_status_waits_behind_an_undelivered_earlier_one(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """captured, recorded while approved is still being retried, goes out only after it."""
    settings = settings_for(redis_url)
    recorder = Recorder(lambda n, _b: (500 if n == 1 else 200, {}, 0.0))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        approved, captured = transition("pay_o", "approved"), transition("pay_o", "captured")
        assert await emit(redis, settings, approved) == 1
        assert await emit(redis, settings, captured) == 1
        # Only approved, first in the line, has a job; captured waits behind it.
        assert [j.decode() for j in await redis.zrange(settings.queue_name, 0, -1)] == [
            f"fdl:ledger:{approved.id}:1"
        ]
        await run_worker(make_worker(settings))
    assert [(r.json["type"], r.status) for r in recorder.requests] == [
        ("payment.approved", 500),
        ("payment.approved", 200),
        ("payment.captured", 200),
    ]


async def test_filters_select_subscribers(redis_url: str, redis: aioredis.Redis) -> None:
    """Event patterns, channel and source filters decide who gets a transition."""
    settings = settings_for(redis_url)
    recorder = Recorder()
    async with serve_app(recorder.app()) as base:
        store = SubscriberStore(redis)
        await store.put(subscriber("all", base))
        await store.put(subscriber("captures", base, events=["payment.captured"]))
        await store.put(subscriber("pos", base, channels=["pos"]))
        await store.put(subscriber("stripe", base, sources=["stripe"]))
        await store.put(subscriber("off", base, enabled=False))
        await emit(redis, settings, transition("pay_f", "approved"))
        await emit(redis, settings, transition("pay_f", "captured"))
        await run_worker(make_worker(settings))
    admin = DeliveryAdmin(redis, settings.queue_name)
    got = {sub: [a["type"] for a in await admin.attempts(sub)] for sub in ("all", "captures")}
    assert sorted(got["all"]) == ["payment.approved", "payment.captured"]
    assert got["captures"] == ["payment.captured"]
    for sub in ("pos", "stripe", "off"):
        assert await admin.attempts(sub) == []
    assert len(recorder.requests) == 3


async def test_one_log_line_and_metrics_per_attempt_without_secrets(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Each attempt logs one line with its context (never the secret or signature) and counts."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.02"])
    recorder = Recorder(lambda n, _b: (500 if n == 1 else 200, {}, 0.0))
    before = REGISTRY.get_sample_value(
        "kartahook_deliveries_total", {"subscriber": "metered", "outcome": "delivered"}
    )
    async with serve_app(recorder.app()) as base:
        sub = subscriber("metered", base)
        await SubscriberStore(redis).put(sub)
        await emit(redis, settings, transition("pay_m", "captured"))
        with capture_logs() as logs:
            await run_worker(make_worker(settings))
    lines = [entry for entry in logs if entry["event"] == "delivery_attempt"]
    assert [(e["attempt"], e["status"], e["outcome"]) for e in lines] == [
        (1, 500, "retry"),
        (2, 200, "delivered"),
    ]
    for entry in lines:
        assert {"subscriber", "payment_id", "event_type", "duration_ms"} <= set(entry)
    text = repr(logs)
    assert sub.secret not in text
    assert recorder.requests[0].headers["webhook-signature"] not in text
    after = REGISTRY.get_sample_value(
        "kartahook_deliveries_total", {"subscriber": "metered", "outcome": "delivered"}
    )
    assert (after or 0) - (before or 0) == 1
    assert REGISTRY.get_sample_value(
        "kartahook_received_to_delivered_seconds_count", {"subscriber": "metered"}
    )
