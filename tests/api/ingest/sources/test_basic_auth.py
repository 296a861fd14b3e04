"""The three HTTP Basic sources (mvola-mg PUT, mvola-km POST, holo GET) on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest
import structlog

from tests.api.ingest.sources.support import basic, metric_value, request_lines, served

OLD = ("old-user", "old-password")
NEW = ("new-user", "new-password")
CREDENTIALS = [{"username": u, "password": p} for u, p in (OLD, NEW)]


@dataclass(frozen=True)
class Kind:
    """How one Basic source's webhook looks."""

    name: str
    method: str
    options: dict[str, Any]

    def request(self, event: str, payment: str) -> dict[str, Any]:
        """httpx keyword arguments of one webhook for ``event`` about ``payment``."""
        if self.name == "mvola-mg":
            body = {
                "transactionStatus": "completed",
                "serverCorrelationId": event,
                "transactionReference": "641235",
                "requestDate": "2026-12-01T10:00:00.000Z",
                "debitParty": [{"key": "msisdn", "value": "0343500003"}],
                "creditParty": [{"key": "msisdn", "value": "0343500004"}],
                "fees": [{"feeAmount": "0"}],
                "metadata": [
                    {"key": "partnerName", "value": "shop"},
                    {"key": "paymentId", "value": payment},
                ],
            }
            return {"content": orjson.dumps(body), "headers": {"content-type": "application/json"}}
        if self.name == "mvola-km":
            body = {"transID": event, "status": "SUCCESS", "transIDP": payment, "amount": "1000"}
            return {"content": orjson.dumps(body), "headers": {"content-type": "application/json"}}
        return {"params": {"transactionId": event, "reference": payment, "status": "PAID"}}


KINDS = [
    Kind("mvola-mg", "PUT", {}),
    Kind("mvola-km", "POST", {}),
    Kind(
        "holo",
        "GET",
        {"event_id": "query:transactionId", "payment_id": "query:reference"},
    ),
]


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture
async def client(redis_url: str, kind: Kind) -> AsyncIterator[httpx.AsyncClient]:
    config = {kind.name: {"credentials": CREDENTIALS, **kind.options}}
    async with served(redis_url, config) as http:
        yield http


async def send(
    client: httpx.AsyncClient,
    kind: Kind,
    kwargs: dict[str, Any],
    auth: str | None,
    method: str | None = None,
) -> httpx.Response:
    headers = dict(kwargs.get("headers", {}))
    if auth is not None:
        headers["authorization"] = auth
    return await client.request(
        method or kind.method,
        f"/v1/webhooks/{kind.name}",
        content=kwargs.get("content"),
        params=kwargs.get("params"),
        headers=headers,
    )


async def test_valid_then_duplicate(client: httpx.AsyncClient, kind: Kind) -> None:
    """Right credentials: 202 with the event id; the same event again: 200."""
    event = uuid4().hex
    webhook = kind.request(event, "pay_1")
    first = await send(client, kind, webhook, basic(*OLD))
    assert first.status_code == 202, first.text
    assert first.json()["event_id"].startswith(event)
    again = await send(client, kind, webhook, basic(*OLD))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"


async def test_second_credential_of_a_rotation(client: httpx.AsyncClient, kind: Kind) -> None:
    """Either configured credential is accepted (rotation): the second one gives 202."""
    response = await send(client, kind, kind.request(uuid4().hex, "pay_2"), basic(*NEW))
    assert response.status_code == 202


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic("old-user", "wrong"),
        basic("new-user", "old-password"),
        basic("nobody", "new-password"),
        "Bearer old-password",
        "Basic not-base64!",
    ],
    ids=["missing", "wrong-password", "crossed-pair", "wrong-user", "not-basic", "garbled"],
)
async def test_missing_or_wrong_credentials(
    client: httpx.AsyncClient, kind: Kind, auth: str | None
) -> None:
    """Missing or wrong credentials: 401 with a Basic challenge; nothing said about why."""
    with structlog.testing.capture_logs() as logs:
        response = await send(client, kind, kind.request(uuid4().hex, "pay_3"), auth)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert response.json() == {"error": "unauthenticated"}
    [line] = request_lines(logs)
    assert (line["source"], line["outcome"], line["status"]) == (kind.name, "unauthenticated", 401)


async def test_wrong_method(client: httpx.AsyncClient, kind: Kind) -> None:
    """Another method than the source's: 405 naming the allowed one."""
    other = "POST" if kind.method != "POST" else "PUT"
    response = await send(client, kind, kind.request(uuid4().hex, "pay_4"), basic(*OLD), other)
    assert response.status_code == 405
    assert response.headers["allow"] == kind.method


async def test_rejections_counted_by_source(client: httpx.AsyncClient, kind: Kind) -> None:
    """A rejection is counted in kartahook_webhooks_total with its source and outcome."""
    before = await metric_value(client, kind.name, "unauthenticated")
    await send(client, kind, kind.request(uuid4().hex, "pay_5"), basic("x", "y"))
    assert await metric_value(client, kind.name, "unauthenticated") == before + 1
