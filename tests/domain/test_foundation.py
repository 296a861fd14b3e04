"""Tests of the shared leaf modules: signing, the job contract, the embedded Redis helper."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from service.domain import events, signing
from service.store import layout
from service.store.server import RedisServer


def test_signature_verifies_with_standardwebhooks_package() -> None:
    """Headers made by service.domain.signing verify with the reference standardwebhooks package."""
    secret = signing.generate_secret()
    body = b'{"type":"payment.captured"}'
    headers = signing.sign_headers(secret, "msg_1", body)
    assert Webhook(secret).verify(body, headers) == {"type": "payment.captured"}


def test_verify_accepts_any_rotated_key_and_rejects_others() -> None:
    """verify() accepts a message signed by any configured key and rejects an unknown one."""
    old, new, other = (signing.generate_secret() for _ in range(3))
    body = b"{}"
    keys = [signing.decode_secret(old), signing.decode_secret(new)]
    for secret in (old, new):
        assert signing.verify(keys, signing.sign_headers(secret, "m", body), body) == "m"
    with pytest.raises(signing.SignatureError):
        signing.verify(keys, signing.sign_headers(other, "m", body), body)


def test_verify_rejects_stale_and_future_timestamps() -> None:
    """A timestamp 301 s in the past or future is refused, 299 s is accepted."""
    secret = signing.generate_secret()
    keys = [signing.decode_secret(secret)]
    now = time.time()
    for skew in (-301, 301):
        headers = signing.sign_headers(secret, "m", b"{}", timestamp=int(now + skew))
        with pytest.raises(signing.TimestampError):
            signing.verify(keys, headers, b"{}", now=now)
    headers = signing.sign_headers(secret, "m", b"{}", timestamp=int(now - 299))
    assert signing.verify(keys, headers, b"{}", now=now) == "m"


def test_transition_id_is_stable_and_distinct() -> None:
    """A transition id depends on (payment id, status) only."""
    assert events.transition_id("p1", "captured") == events.transition_id("p1", "captured")
    assert events.transition_id("p1", "captured") != events.transition_id("p1", "approved")
    assert events.transition_id("p1", "captured") != events.transition_id("p2", "captured")


async def test_embedded_redis_persists_with_aof(tmp_path: Path) -> None:
    """The embedded redis-server keeps written data across a restart, thanks to AOF."""
    data_dir = tmp_path
    server = RedisServer(data_dir).start()
    port = server.port
    client = aioredis.from_url(server.url)
    await client.set("k", "v")
    await client.aclose()
    server.stop()
    server = RedisServer(data_dir, port=port).start()
    client = aioredis.from_url(server.url)
    try:
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
        server.stop()


async def test_job_keys_outlive_a_multi_day_backlog(redis_url: str) -> None:
    """Jobs written by Lua and by the worker's arq pool live for days, not arq's one day."""
    from service.settings import Settings
    from workers.main import build_worker

    assert layout.ARQ_EXPIRES_EXTRA_MS >= 3 * 86_400_000
    worker = build_worker(Settings(redis_url=redis_url), handle_signals=False)
    assert worker.expires_extra_ms == layout.ARQ_EXPIRES_EXTRA_MS
