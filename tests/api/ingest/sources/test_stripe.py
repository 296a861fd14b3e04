"""Stripe: every header sent is first judged by the stripe library's own verify_header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import orjson
import pytest
import stripe

from tests.api.ingest.sources.support import served

OLD_SECRET = "whsec_" + base64.b64encode(b"old stripe endpoint secret 32byt").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"new stripe endpoint secret 32byt").decode()
PATH = "/v1/webhooks/stripe"


def event(event_id: str | None = None, payment_id: str = "pay_s1") -> bytes:
    return orjson.dumps(
        {
            "id": event_id or f"evt_{uuid4().hex}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "metadata": {"paymentId": payment_id}}},
        }
    )


def v1(body: bytes, secret: str | bytes, timestamp: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header(body: bytes, secret: str = NEW_SECRET, *, age_s: int = 0) -> str:
    timestamp = int(time.time()) - age_s
    return f"t={timestamp},v1={v1(body, secret, timestamp)}"


def stripe_accepts(body: bytes, signature: str, secret: str) -> bool:
    """What the stripe library says of this header (300 s tolerance, as the source's)."""
    try:
        stripe.WebhookSignature.verify_header(body, signature, secret, tolerance=300)
    except stripe.SignatureVerificationError:
        return False
    return True


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    config = {"stripe": {"secrets": [OLD_SECRET, NEW_SECRET], "tolerance_s": 300}}
    async with served(redis_url, config) as http:
        yield http


async def post(client: httpx.AsyncClient, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"content-type": "application/json; charset=utf-8"}
    if signature is not None:
        headers["stripe-signature"] = signature
    return await client.post(PATH, content=body, headers=headers)


async def test_valid_then_duplicate(client: httpx.AsyncClient) -> None:
    """A header stripe's library accepts: 202 with the event id; the same event again: 200."""
    body = event("evt_dup_" + uuid4().hex)
    signature = header(body)
    assert stripe_accepts(body, signature, NEW_SECRET)
    first = await post(client, body, signature)
    assert first.status_code == 202, first.text
    assert first.json()["event_id"] == orjson.loads(body)["id"]
    again = await post(client, body, header(body))
    assert again.status_code == 200


async def test_second_secret_of_a_rotation(client: httpx.AsyncClient) -> None:
    """A header signed with the other configured secret is accepted too."""
    body = event()
    signature = header(body, OLD_SECRET)
    assert stripe_accepts(body, signature, OLD_SECRET)
    assert (await post(client, body, signature)).status_code == 202


async def test_tampered_body_or_signature(client: httpx.AsyncClient) -> None:
    """A changed body, or a changed signature, is refused (401) as stripe refuses it."""
    body = event()
    signature = header(body)
    tampered_body = body.replace(b"pay_s1", b"pay_s2")
    assert not stripe_accepts(tampered_body, signature, NEW_SECRET)
    assert (await post(client, tampered_body, signature)).status_code == 401
    last = signature[-1]
    tampered_signature = signature[:-1] + ("0" if last != "0" else "1")
    assert not stripe_accepts(body, tampered_signature, NEW_SECRET)
    response = await post(client, body, tampered_signature)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthenticated"}


async def test_missing_or_wrong_secret(client: httpx.AsyncClient) -> None:
    """No Stripe-Signature, or one made with an unknown secret: 401."""
    body = event()
    other = "whsec_" + base64.b64encode(b"some other secret").decode()
    signature = header(body, other)
    assert stripe_accepts(body, signature, other)
    assert not stripe_accepts(body, signature, NEW_SECRET)
    assert (await post(client, body, signature)).status_code == 401
    assert (await post(client, body, None)).status_code == 401


async def test_secret_is_used_as_written(client: httpx.AsyncClient) -> None:
    """The key is the whsec_ string itself: a signature keyed with its base64-decoded bytes
    (Standard Webhooks' reading) is refused, by stripe and by the source."""
    body = event()
    timestamp = int(time.time())
    decoded_key = base64.b64decode(NEW_SECRET.removeprefix("whsec_"))
    signature = f"t={timestamp},v1={v1(body, decoded_key, timestamp)}"
    assert not stripe_accepts(body, signature, NEW_SECRET)
    assert (await post(client, body, signature)).status_code == 401


async def test_stale_timestamp(client: httpx.AsyncClient) -> None:
    """A signature older than the 300 s tolerance is refused (401), as stripe refuses it;
    one just inside it is accepted."""
    body = event()
    stale = header(body, age_s=400)
    assert not stripe_accepts(body, stale, NEW_SECRET)
    assert (await post(client, body, stale)).status_code == 401
    recent = header(body, age_s=200)
    assert stripe_accepts(body, recent, NEW_SECRET)
    assert (await post(client, body, recent)).status_code == 202


async def test_v0_only_is_refused(client: httpx.AsyncClient) -> None:
    """A header carrying only a v0 signature (even a right one) is refused: v0 is ignored."""
    body = event()
    timestamp = int(time.time())
    signature = f"t={timestamp},v0={v1(body, NEW_SECRET, timestamp)}"
    assert not stripe_accepts(body, signature, NEW_SECRET)
    assert (await post(client, body, signature)).status_code == 401


async def test_any_of_several_v1_may_match(client: httpx.AsyncClient) -> None:
    """With several v1 signatures (Stripe during a secret roll) and a v0, one right v1 is
    enough, wherever it stands."""
    for position in ("first", "last"):
        body = event()
        timestamp = int(time.time())
        right = v1(body, NEW_SECRET, timestamp)
        wrong = v1(body, "whsec_unknown", timestamp)
        signatures = [right, wrong] if position == "first" else [wrong, right]
        signature = f"t={timestamp},v1={signatures[0]},v1={signatures[1]},v0={wrong}"
        assert stripe_accepts(body, signature, NEW_SECRET)
        assert (await post(client, body, signature)).status_code == 202, position


async def test_malformed_timestamp(client: httpx.AsyncClient) -> None:
    """A timestamp that is not a number, or too large to be one, is a malformed request (400)."""
    body = event()
    for timestamp in ("abc", "9" * 40):
        signature = f"t={timestamp},v1={v1(body, NEW_SECRET, 0)}"
        assert not stripe_accepts(body, signature, NEW_SECRET)
        assert (await post(client, body, signature)).status_code == 400, timestamp


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    """GET on the Stripe source: 405."""
    response = await client.get(PATH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
