"""MVola Comoros: POST, Basic, event id transID:status, payment id transIDP."""

from __future__ import annotations

from uuid import uuid4

import orjson

from tests.api.ingest.sources.support import basic, served

CONFIG = {"mvola-km": {"credentials": [{"username": "km", "password": "pw"}]}}
HEADERS = {"content-type": "application/json", "authorization": basic("km", "pw")}


async def test_event_id_joins_transaction_and_status(redis_url: str) -> None:
    """Two statuses of one transID are two events (transID:status), both accepted."""
    trans_id = uuid4().hex
    async with served(redis_url, CONFIG) as client:
        answers = [
            await client.post(
                "/v1/webhooks/mvola-km",
                content=orjson.dumps({"transID": trans_id, "status": status, "transIDP": "p1"}),
                headers=HEADERS,
            )
            for status in ("PENDING", "SUCCESS")
        ]
    assert [a.status_code for a in answers] == [202, 202]
    assert [a.json()["event_id"] for a in answers] == [f"{trans_id}:PENDING", f"{trans_id}:SUCCESS"]


async def test_missing_part_of_the_event_id(redis_url: str) -> None:
    """Without its status the event id is incomplete: 400, not a half id."""
    async with served(redis_url, CONFIG) as client:
        response = await client.post(
            "/v1/webhooks/mvola-km",
            content=orjson.dumps({"transID": uuid4().hex, "transIDP": "p1"}),
            headers=HEADERS,
        )
    assert response.status_code == 400
