"""MVola Madagascar: PUT, Basic, allowed_ips after trusted proxies, ids from its callback."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import orjson
import redis.asyncio as aioredis
import structlog

from service.store.events import UNROUTABLE_KEY
from tests.api.ingest.sources.support import basic, metric_value, request_lines, served

CREDENTIALS = [{"username": "mvola", "password": "s3cret"}]
AUTH = basic("mvola", "s3cret")


def callback(correlation_id: str, status: str, payment_id: str | None = "pay_mg") -> bytes:
    metadata: list[dict[str, Any]] = [{"key": "partnerName", "value": "shop"}]
    if payment_id is not None:
        metadata.append({"key": "paymentId", "value": payment_id})
    return orjson.dumps(
        {
            "transactionStatus": status,
            "serverCorrelationId": correlation_id,
            "transactionReference": "641235",
            "metadata": metadata,
        }
    )


def headers(**extra: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": AUTH, **extra}


async def test_each_status_of_a_transaction_is_its_own_event(redis_url: str) -> None:
    """The event id joins serverCorrelationId and transactionStatus; the payment id comes
    from metadata[key=paymentId]."""
    correlation = uuid4().hex
    async with served(redis_url, {"mvola-mg": {"credentials": CREDENTIALS}}) as client:
        pending = await client.put(
            "/v1/webhooks/mvola-mg", content=callback(correlation, "pending"), headers=headers()
        )
        completed = await client.put(
            "/v1/webhooks/mvola-mg", content=callback(correlation, "completed"), headers=headers()
        )
        again = await client.put(
            "/v1/webhooks/mvola-mg", content=callback(correlation, "completed"), headers=headers()
        )
    assert (pending.status_code, completed.status_code, again.status_code) == (202, 202, 200)
    assert pending.json()["event_id"] == f"{correlation}:pending"
    assert completed.json()["event_id"] == f"{correlation}:completed"


async def test_no_payment_id_in_metadata(redis_url: str, redis: aioredis.Redis) -> None:
    """A callback without metadata paymentId is 422 and kept for inspection."""
    correlation = uuid4().hex
    async with served(redis_url, {"mvola-mg": {"credentials": CREDENTIALS}}) as client:
        response = await client.put(
            "/v1/webhooks/mvola-mg",
            content=callback(correlation, "completed", payment_id=None),
            headers=headers(),
        )
    assert response.status_code == 422
    kept = await redis.lrange(UNROUTABLE_KEY, 0, -1)  # type: ignore[misc]
    assert any(correlation.encode() in item for item in kept)


async def test_client_outside_allowed_ips_is_forbidden(redis_url: str) -> None:
    """Right credentials from an address outside allowed_ips: 403, logged and counted."""
    config = {"mvola-mg": {"credentials": CREDENTIALS, "allowed_ips": ["196.192.32.0/24"]}}
    async with served(redis_url, config, trusted_proxies=["10.9.9.9"]) as client:
        before = await metric_value(client, "mvola-mg", "forbidden")
        with structlog.testing.capture_logs() as logs:
            # The test client (127.0.0.1) is no trusted proxy: its X-Forwarded-For is ignored.
            response = await client.put(
                "/v1/webhooks/mvola-mg",
                content=callback(uuid4().hex, "completed"),
                headers=headers(**{"x-forwarded-for": "196.192.32.7"}),
            )
        assert response.status_code == 403
        assert response.json() == {"error": "forbidden"}
        [line] = request_lines(logs)
        assert (line["source"], line["outcome"]) == ("mvola-mg", "forbidden")
        assert await metric_value(client, "mvola-mg", "forbidden") == before + 1
        wrong = await client.put(
            "/v1/webhooks/mvola-mg",
            content=callback(uuid4().hex, "completed"),
            headers=headers(authorization=basic("mvola", "nope")),
        )
        assert wrong.status_code == 401  # credentials are checked first


async def test_allowed_ips_use_the_address_after_trusted_proxies(redis_url: str) -> None:
    """Behind a trusted proxy the forwarded address decides: inside the CIDR 202, outside 403."""
    config = {"mvola-mg": {"credentials": CREDENTIALS, "allowed_ips": ["196.192.32.0/24"]}}
    async with served(redis_url, config, trusted_proxies=["127.0.0.1"]) as client:
        inside = await client.put(
            "/v1/webhooks/mvola-mg",
            content=callback(uuid4().hex, "completed"),
            headers=headers(**{"x-forwarded-for": "196.192.32.7"}),
        )
        outside = await client.put(
            "/v1/webhooks/mvola-mg",
            content=callback(uuid4().hex, "completed"),
            headers=headers(**{"x-forwarded-for": "196.192.33.7"}),
        )
    assert (inside.status_code, outside.status_code) == (202, 403)
