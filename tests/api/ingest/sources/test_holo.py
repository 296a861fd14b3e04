"""Holo: GET with its parameters in the query string, Basic, locators configured."""

from __future__ import annotations

from uuid import uuid4

import orjson
import pytest
import redis.asyncio as aioredis

from service.api.ingest.sources import SourceConfigError, build_sources
from service.store.events import UNROUTABLE_KEY, read_raw_record
from service.store.layout import event_field, event_key
from tests.api.ingest.sources.support import basic, served

CONFIG = {
    "holo": {
        "credentials": [{"username": "holo", "password": "pw"}],
        "event_id": ["query:transactionId", "query:status"],
        "payment_id": "query:reference",
    }
}
AUTH = {"authorization": basic("holo", "pw")}


async def test_get_with_query_parameters(redis_url: str, redis: aioredis.Redis) -> None:
    """A GET without body or content type is accepted; its query string is what is kept."""
    transaction = uuid4().hex
    params = {"transactionId": transaction, "status": "PAID", "reference": "pay_h1"}
    async with served(redis_url, CONFIG) as client:
        response = await client.get("/v1/webhooks/holo", params=params, headers=AUTH)
        again = await client.get("/v1/webhooks/holo", params=params, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["event_id"] == f"{transaction}:PAID"
    assert again.status_code == 200
    stored = await redis.hget(event_key("pay_h1"), event_field("holo", f"{transaction}:PAID"))  # type: ignore[misc]
    record = read_raw_record(stored)
    assert record["body"] == f"transactionId={transaction}&status=PAID&reference=pay_h1"


async def test_missing_parameter(redis_url: str) -> None:
    """Without the parameter holding the event id: 400."""
    async with served(redis_url, CONFIG) as client:
        response = await client.get("/v1/webhooks/holo", params={"reference": "p"}, headers=AUTH)
    assert response.status_code == 400


def test_locators_must_be_configured() -> None:
    """Holo has no default locators: a configuration without them names source and field."""
    with pytest.raises(SourceConfigError, match=r"source 'holo': event_id"):
        build_sources({"holo": {"credentials": [{"username": "u", "password": "p"}]}})


async def test_no_payment_id_keeps_the_query(redis_url: str, redis: aioredis.Redis) -> None:
    """Without the payment id parameter: 422, and what is kept is the query string."""
    transaction = uuid4().hex
    params = {"transactionId": transaction, "status": "PAID"}
    async with served(redis_url, CONFIG) as client:
        response = await client.get("/v1/webhooks/holo", params=params, headers=AUTH)
    assert response.status_code == 422
    kept = [orjson.loads(item) for item in await redis.lrange(UNROUTABLE_KEY, 0, -1)]  # type: ignore[misc]
    assert any(record["body"] == f"transactionId={transaction}&status=PAID" for record in kept)
