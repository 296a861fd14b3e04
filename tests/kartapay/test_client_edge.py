"""KartaPay client edge cases that a real server cannot produce on demand (httpx.MockTransport).

Everything an actual server can do is tested live in test_kartapay_client.py.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from service.kartapay import (
    ApiError,
    AuthError,
    BadRequestError,
    Claim,
    ForbiddenError,
    InvalidResponseError,
    KartaPayClient,
    Payer,
    Payment,
    PaymentRecord,
    PaymentStatus,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from service.settings import Settings

TOKEN = "edge-secret-token"
BASE = "http://kartapay.test"
PAYMENT = {"status": "init", "purchase": {"total": {"value": "10.00", "currency": "EUR"}}}

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, **kwargs: Any) -> KartaPayClient:
    """A client whose requests go to ``handler`` instead of the network."""
    return KartaPayClient(BASE, TOKEN, transport=httpx.MockTransport(handler), **kwargs)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


async def test_read_timeout_raises_request_timeout_error() -> None:
    """A read timeout becomes RequestTimeoutError, a TransportError, without the token in it."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with client_for(handler) as client:
        with pytest.raises(RequestTimeoutError) as caught:
            await client.get("pay_1")
    assert isinstance(caught.value, TransportError)
    assert caught.value.path == "/v1/payments/pay_1"
    assert TOKEN not in str(caught.value)


async def test_protocol_error_raises_transport_error() -> None:
    """An httpx protocol error (not a timeout) becomes a plain TransportError."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    async with client_for(handler) as client:
        with pytest.raises(TransportError) as caught:
            await client.get("pay_1")
    assert not isinstance(caught.value, RequestTimeoutError)
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


async def test_retry_after_http_date_is_parsed_into_seconds() -> None:
    """A 429 whose Retry-After is an HTTP-date carries the seconds until that date."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(429, {"message": "slow down"}, {"Retry-After": when})

    async with client_for(handler) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.get("pay_1")
    assert caught.value.status_code == 429
    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 121
    assert caught.value.detail == "slow down"


async def test_503_with_retry_after_is_a_server_error_carrying_it() -> None:
    """A 503 is a ServerError, and it keeps the Retry-After it was given."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down for maintenance", headers={"Retry-After": "9"})

    async with client_for(handler) as client:
        with pytest.raises(ServerError) as caught:
            await client.get("pay_1")
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 9.0
    assert caught.value.detail == "down for maintenance"


async def test_403_raises_forbidden_error() -> None:
    """A 403 is a ForbiddenError, an AuthError, with its status code."""

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(403, {"message": "Forbidden"})

    async with client_for(handler) as client:
        with pytest.raises(ForbiddenError) as caught:
            await client.cancel("pay_1")
    assert isinstance(caught.value, AuthError)
    assert caught.value.status_code == 403
    assert caught.value.method == "POST"
    assert TOKEN not in str(caught.value)


async def test_unexpected_status_raises_plain_api_error() -> None:
    """A status outside the documented ones (409) raises ApiError itself, no subclass."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409)

    async with client_for(handler) as client:
        with pytest.raises(ApiError) as caught:
            await client.get("pay_1")
    assert type(caught.value) is ApiError
    assert caught.value.status_code == 409


async def test_malformed_json_body_raises_invalid_response() -> None:
    """A 200 whose body is not JSON raises InvalidResponseError, not a decode error."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy error</html>")

    async with client_for(handler) as client:
        with pytest.raises(InvalidResponseError) as caught:
            await client.get("pay_1")
    assert caught.value.status_code == 200
    assert "not JSON" in str(caught.value)


async def test_body_not_matching_spec_raises_invalid_response_without_values() -> None:
    """A 200 body that breaks the schema raises InvalidResponseError naming fields, not values."""
    body = {"status": "bogus", "payer": {"email": "ann@example.com", "phone": "0341234"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(200, body)

    async with client_for(handler) as client:
        with pytest.raises(InvalidResponseError) as caught:
            await client.get("pay_1")
    message = str(caught.value)
    assert "purchase" in message and "payer.phone" in message
    assert "0341234" not in message and "ann@example.com" not in message


async def test_get_attaches_the_requested_id_never_data_id() -> None:
    """get() returns the id from the URL, whether the body has no data.id or a different one."""
    bodies = iter([PAYMENT, {**PAYMENT, "id": "someone_else"}])

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(200, next(bodies))

    async with client_for(handler) as client:
        plain = await client.get("pay_1")
        other = await client.get("pay_1")
    assert plain.id == "pay_1" and plain.status is PaymentStatus.INIT
    assert other.id == "pay_1"
    assert other.to_json()["id"] == "pay_1"


async def test_create_learns_id_from_location_without_data_id() -> None:
    """create() takes the id from the Location header when the body has no data.id."""

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(
            201,
            {"next": "https://pay.example/next", "data": PAYMENT},
            {"Location": "/v1/payments/pay%2042"},
        )

    async with client_for(handler) as client:
        record = await client.create(Claim.model_validate({"purchase": PAYMENT["purchase"]}))
    assert record.id == "pay 42"
    assert record.next == "https://pay.example/next"


async def test_create_falls_back_to_data_id_then_fails_without_either() -> None:
    """create() uses data.id when Location is missing, and raises when both are missing."""
    bodies = iter([{"data": {**PAYMENT, "id": "pay_7"}}, {"data": PAYMENT}])

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(201, next(bodies))

    async with client_for(handler) as client:
        assert (await client.create({"purchase": PAYMENT["purchase"]})).id == "pay_7"
        with pytest.raises(InvalidResponseError):
            await client.create({"purchase": PAYMENT["purchase"]})


async def test_requests_carry_token_language_and_explicit_timeouts() -> None:
    """Every request sends Bearer token and Accept-Language, with all four timeouts set."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(200, PAYMENT)

    settings = Settings(
        kartapay_url=BASE, kartapay_token=TOKEN, kartapay_language="fr-FR", kartapay_timeout_s=2.5
    )
    async with KartaPayClient.from_settings(
        settings, transport=httpx.MockTransport(handler)
    ) as client:
        await client.get("pay_1")
        assert TOKEN not in repr(client)
    (request,) = seen
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept-Language"] == "fr-FR"
    assert request.extensions["timeout"] == {
        "connect": 2.5,
        "read": 2.5,
        "write": 2.5,
        "pool": 2.5,
    }


async def test_payment_id_stays_one_path_segment() -> None:
    """An id with a slash is percent-encoded, so it cannot reach another path."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return json_response(200, {"data": PAYMENT})

    async with client_for(handler) as client:
        await client.submit("../x", "STR")
        with pytest.raises(ValueError, match="empty"):
            await client.get("")
    assert paths == ["/v1/payments/..%2Fx/submit"]


async def test_iter_all_without_total_stops_at_empty_page() -> None:
    """iter_all walks by offset and stops at the first empty page when no total is given."""
    offsets: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        offsets.append(request.url.params["offset"])
        data = [PAYMENT] * (2 if offset < 4 else 1 if offset == 4 else 0)
        return json_response(200, {"data": data})

    async with client_for(handler) as client:
        walked = [payment async for payment in client.iter_all(page_size=2)]
    assert len(walked) == 5
    assert offsets == ["0", "2", "4", "5"]


def test_payer_with_full_name_and_email_only_is_accepted() -> None:
    """The Payer quirk: fullName + email is a valid payer; firstName/lastName are not needed."""
    payer = Payer.model_validate({"fullName": "Ann Rakoto", "email": "ann@example.com"})
    assert payer.fullName == "Ann Rakoto"
    with pytest.raises(ValueError, match="email"):
        Payer.model_validate({"fullName": "Ann Rakoto"})
    with pytest.raises(ValueError, match="phone"):
        Payer.model_validate({"email": "a@example.com", "phone": "0341234"})


def test_record_to_json_is_the_payment_as_fetched_with_its_id() -> None:
    """to_json() gives spec field names, extras kept, unset fields dropped, id first."""
    body = {
        **PAYMENT,
        "id": "from_body",
        "context": {"channels": ["web"]},
        "createdAt": "2026-01-01T00:00:00.000Z",
        "vendorField": {"x": 1},
    }
    record = PaymentRecord(id="pay_1", payment=Payment.model_validate(body))
    data = record.to_json()
    assert next(iter(data)) == "id"
    assert data == {
        "id": "pay_1",
        "status": "init",
        "context": {"channels": ["web"]},
        "purchase": {"total": {"value": "10.00", "currency": "EUR"}},
        "createdAt": "2026-01-01T00:00:00.000Z",
        "vendorField": {"x": 1},
    }


async def test_nestjs_list_of_messages_becomes_one_detail() -> None:
    """A 400 whose NestJS body lists several messages gets them joined in ``detail``."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"statusCode": 400, "message": ["a is bad", "b is bad"], "error": "Bad Request"}
        return json_response(400, body)

    async with client_for(handler) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.create({"purchase": {}})
    assert caught.value.status_code == 400
    assert caught.value.detail == "a is bad; b is bad"
