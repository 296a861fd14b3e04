"""Ingestion when Redis is down or stalled: 503 + Retry-After, nothing half-written, recovery.

Uses its own redis-server (not the shared fixture), since the tests stop and pause it.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import httpx
import orjson
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from service.api.app import create_app
from service.api.ingest.sources import build_sources
from service.domain.signing import generate_secret
from service.settings import Settings
from service.store import layout
from service.store.server import RedisServer
from tests.support import serve_app

SECRET = generate_secret()
URL_PATH = "/v1/webhooks/kartapay"


def signed_request(msg_id: str, payment_id: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"type": "payment.captured", "data": {"id": payment_id}})
    now = datetime.now(tz=UTC)
    return body, {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id=msg_id, timestamp=now, data=body.decode()),
    }


def make_app(redis_url: str) -> object:
    settings = Settings(
        redis_url=redis_url, sources_file=None, redis_timeout_s=0.5, retry_after_s=7
    )
    return create_app(settings, build_sources({"kartapay": {"secrets": [SECRET]}}))


async def event_keys(client: aioredis.Redis, msg_id: str) -> list[bool]:
    """Which of the event's field in its payment's event hash (dedupe and raw archive), job and
    queue entry exist for an event (``msg_x`` is about payment ``pay_x``)."""
    job_id = layout.event_job_id("kartapay", msg_id)
    payment_id = msg_id.replace("msg_", "pay_", 1)
    return [
        bool(
            await client.hexists(
                layout.event_key(payment_id), layout.event_field("kartapay", msg_id)
            )
        ),  # type: ignore[misc]
        bool(await client.exists(layout.ARQ_JOB_PREFIX + job_id)),
        await client.zscore("arq:queue", job_id) is not None,
    ]


async def test_redis_stopped_gives_503_and_restart_accepts_the_same_webhook(
    own_redis: RedisServer,
) -> None:
    """Redis down: 503 + Retry-After and no keys; Redis back: the same webhook gets 202."""
    body, headers = signed_request("msg_down", "pay_down")
    async with (
        serve_app(make_app(own_redis.url)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        warm_body, warm_headers = signed_request("msg_warm", "pay_warm")
        assert (
            await http.post(URL_PATH, content=warm_body, headers=warm_headers)
        ).status_code == 202
        own_redis.stop()
        down = await http.post(URL_PATH, content=body, headers=headers)
        assert down.status_code == 503
        assert down.headers["retry-after"] == "7"
        assert down.json() == {"error": "temporarily unavailable"}
        assert (await http.get("/readyz")).status_code == 503
        own_redis.start()
        client = aioredis.from_url(own_redis.url)
        try:
            assert await event_keys(client, "msg_down") == [False] * 3
            assert await event_keys(client, "msg_warm") == [True] * 3
            again = await http.post(URL_PATH, content=body, headers=headers)
            assert again.status_code == 202
            assert await event_keys(client, "msg_down") == [True] * 3
        finally:
            await client.aclose()


async def test_stalled_redis_gives_503_within_deadline_and_writes_all_or_nothing(
    own_redis: RedisServer,
) -> None:
    """Redis frozen (SIGSTOP) past the deadline: 503; once resumed the event is whole or absent."""
    assert own_redis.process is not None
    body, headers = signed_request("msg_stall", "pay_stall")
    async with (
        serve_app(make_app(own_redis.url)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            stalled = await http.post(URL_PATH, content=body, headers=headers)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert stalled.status_code == 503 and stalled.headers["retry-after"] == "7"
        client = aioredis.from_url(own_redis.url)
        try:
            assert await event_keys(client, "msg_stall") in ([False] * 3, [True] * 3)
            retried = await http.post(URL_PATH, content=body, headers=headers)
            assert retried.status_code in (200, 202)
            assert await event_keys(client, "msg_stall") == [True] * 3
            assert await client.zcard("arq:queue") == 1
        finally:
            await client.aclose()
