"""Huri: a generic HMAC whose header, algorithm, encoding, prefix and timestamp are configured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest

from service.api.ingest.sources import SourceConfigError, build_sources
from tests.api.ingest.sources.support import served

OLD, NEW = "huri-old-secret", "huri-new-secret"
PATH = "/v1/webhooks/huri"


def event() -> bytes:
    return orjson.dumps({"id": f"hr_{uuid4().hex}", "data": {"paymentId": "pay_h"}})


def digest(secret: str, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Huri with the defaults: X-Huri-Signature, hex HMAC-SHA256 of the body, no prefix."""
    config = {"huri": {"secrets": [OLD, NEW], "event_id": "id", "payment_id": "data.paymentId"}}
    async with served(redis_url, config) as http:
        yield http


def headers(signature: str | None, name: str = "x-huri-signature", **extra: str) -> dict[str, str]:
    result = {"content-type": "application/json", **extra}
    if signature is not None:
        result[name] = signature
    return result


async def test_valid_then_duplicate_and_rotation(client: httpx.AsyncClient) -> None:
    """Valid: 202, the same again: 200; a body signed with the other secret: 202."""
    body = event()
    first = await client.post(PATH, content=body, headers=headers(digest(NEW, body).hex()))
    assert first.status_code == 202, first.text
    again = await client.post(PATH, content=body, headers=headers(digest(NEW, body).hex()))
    assert again.status_code == 200
    other = event()
    rotated = await client.post(PATH, content=other, headers=headers(digest(OLD, other).hex()))
    assert rotated.status_code == 202


async def test_tampered_missing_or_wrong(client: httpx.AsyncClient) -> None:
    """Tampered body or signature, no signature, or an unknown secret: 401."""
    body = event()
    signature = digest(NEW, body).hex()
    tampered_body = body.replace(b"pay_h", b"pay_x")
    tampered_signature = ("0" if signature[0] != "0" else "1") + signature[1:]
    cases = [
        (tampered_body, signature),
        (body, tampered_signature),
        (body, None),
        (body, digest("unknown", body).hex()),
        (body, "not hex"),
    ]
    for content, sig in cases:
        response = await client.post(PATH, content=content, headers=headers(sig))
        assert response.status_code == 401, sig


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    """GET on the Huri source: 405."""
    assert (await client.get(PATH)).status_code == 405


async def test_configured_header_algorithm_encoding_prefix_timestamp(redis_url: str) -> None:
    """With another header, sha512, base64, a prefix and a timestamp header, the signature of
    "timestamp.body" is checked; a stale timestamp is 401, a missing one 400."""
    options: dict[str, Any] = {
        "secrets": [NEW],
        "signature_header": "X-Sig",
        "algorithm": "sha512",
        "encoding": "base64",
        "signature_prefix": "sha512=",
        "timestamp_header": "X-Timestamp",
        "tolerance_s": 60,
        "event_id": "id",
        "payment_id": "data.paymentId",
    }

    def sign(body: bytes, timestamp: int) -> dict[str, str]:
        mac = digest(NEW, f"{timestamp}.".encode() + body, "sha512")
        signature = "sha512=" + base64.b64encode(mac).decode()
        return headers(signature, "x-sig", **{"x-timestamp": str(timestamp)})

    async with served(redis_url, {"huri": options}) as client:
        body = event()
        now = int(time.time())
        assert (await client.post(PATH, content=body, headers=sign(body, now))).status_code == 202
        stale = sign(body, now - 120)
        assert (await client.post(PATH, content=body, headers=stale)).status_code == 401
        moved = sign(body, now)
        moved["x-timestamp"] = str(now + 1)  # the signature is bound to its timestamp
        assert (await client.post(PATH, content=body, headers=moved)).status_code == 401
        unprefixed = sign(body, now)
        unprefixed["x-sig"] = unprefixed["x-sig"].removeprefix("sha512=")
        assert (await client.post(PATH, content=body, headers=unprefixed)).status_code == 401
        untimed = sign(body, now)
        del untimed["x-timestamp"]
        assert (await client.post(PATH, content=body, headers=untimed)).status_code == 400


def test_options_checked_at_load() -> None:
    """Unknown algorithm or encoding, or no secret: an error naming source and field."""
    base = {"event_id": "id", "payment_id": "data.paymentId"}
    with pytest.raises(SourceConfigError, match=r"source 'huri': algorithm"):
        build_sources({"huri": {**base, "secrets": ["s"], "algorithm": "md5"}})
    with pytest.raises(SourceConfigError, match=r"source 'huri': encoding"):
        build_sources({"huri": {**base, "secrets": ["s"], "encoding": "base32"}})
    with pytest.raises(SourceConfigError, match=r"source 'huri': secrets"):
        build_sources({"huri": {**base, "secrets": [""]}})
