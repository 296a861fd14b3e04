"""Ingestion with ``KARTAHOOK_REDIS_MIN_REPLICAS=1`` against a real primary and replica: 202 only
once the replica has the event; a paused replica makes it 503 + Retry-After (outcome
``not_replicated``, a log line and the metrics), and the provider's retry after that is a
duplicate.

Uses its own two redis-servers (not the shared fixture), since the tests pause the replica.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import structlog

from service import metrics
from service.api.app import create_app
from service.api.ingest.sources import build_sources
from service.domain.signing import generate_secret, sign_headers
from service.settings import Settings
from service.store import layout
from service.store.server import RedisServer
from tests.support import serve_app, wait_for

SECRET = generate_secret()
URL_PATH = "/v1/webhooks/kartapay"
WAIT_MS = 200


def signed(msg_id: str, payment_id: str) -> tuple[bytes, dict[str, str]]:
    body = b'{"type":"payment.captured","data":{"id":"%s"}}' % payment_id.encode()
    return body, {"content-type": "application/json", **sign_headers(SECRET, msg_id, body)}


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica (REPLICAOF), in sync."""
    primary = RedisServer(tmp_path / "primary", appendonly=False).start()
    replica = RedisServer(tmp_path / "replica", appendonly=False).start()
    client = aioredis.from_url(replica.url)
    try:
        await client.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))

        async def in_sync() -> bool:
            info = await client.info("replication")
            return bool(info.get("master_link_status") == "up")

        await wait_for(in_sync, timeout_s=30)
        yield primary, replica
    finally:
        await client.aclose()
        if replica.process is not None and replica.process.poll() is None:
            os.kill(replica.process.pid, signal.SIGCONT)
        replica.stop()
        primary.stop()


@pytest.fixture
async def logged_http(
    pair: tuple[RedisServer, RedisServer],
) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    """The app with min replicas 1 on the primary, and the log lines it writes."""
    primary, _ = pair
    settings = Settings(
        redis_url=primary.url,
        sources_file=None,
        redis_timeout_s=0.5,
        redis_min_replicas=1,
        redis_wait_timeout_ms=WAIT_MS,
        retry_after_s=7,
    )
    app = create_app(settings, build_sources({"kartapay": {"secrets": [SECRET]}}))
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http, entries


async def test_accepted_only_once_the_replica_has_it(
    pair: tuple[RedisServer, RedisServer],
    logged_http: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    """With min replicas 1, a 202 means the replica already holds the event (read from the
    replica right after the answer)."""
    _, replica = pair
    http, _ = logged_http
    replica_client = aioredis.from_url(replica.url)
    try:
        for n in range(5):
            body, headers = signed(f"msg_rep_{n}", f"pay_rep_{n}")
            answer = await http.post(URL_PATH, content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            stored = (
                layout.event_key(f"pay_rep_{n}"),
                layout.event_field("kartapay", f"msg_rep_{n}"),
            )
            assert await replica_client.hexists(*stored), "acknowledged before the replica had it"  # type: ignore[misc]
    finally:
        await replica_client.aclose()


async def test_paused_replica_gives_503_not_replicated_then_the_retry_is_a_duplicate(
    pair: tuple[RedisServer, RedisServer],
    logged_http: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    """Replica frozen (SIGSTOP): WAIT times out, the answer is 503 + Retry-After with outcome
    not_replicated in the log line and the metrics; once it resumes the provider's retry is
    200 duplicate (the event was on the primary, never acknowledged)."""
    primary, replica = pair
    assert replica.process is not None
    http, entries = logged_http
    labels = {"source": "kartapay", "outcome": "not_replicated"}
    refused_before = sample("kartahook_webhooks_total", labels)
    short_before = sample("kartahook_ingest_wait_short_total")
    body, headers = signed("msg_paused", "pay_paused")
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        refused = await http.post(URL_PATH, content=body, headers=headers)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "7"
    assert refused.json() == {"error": "temporarily unavailable"}
    (line,) = [e for e in entries if e["event"] == "request" and e.get("event_id") == "msg_paused"]
    assert line["status"] == 503 and line["outcome"] == "not_replicated"
    assert line["reason"] == f"0 of 1 replicas acknowledged the write within {WAIT_MS} ms"

    async def counted() -> bool:  # metrics are applied at the end of the loop turn
        return sample("kartahook_webhooks_total", labels) == refused_before + 1

    await wait_for(counted)
    assert sample("kartahook_ingest_wait_short_total") == short_before + 1
    primary_client = aioredis.from_url(primary.url)
    try:
        stored = layout.event_key("pay_paused"), layout.event_field("kartapay", "msg_paused")
        assert await primary_client.hexists(*stored)  # type: ignore[misc]
    finally:
        await primary_client.aclose()
    retried = await http.post(URL_PATH, content=body, headers=headers)
    assert retried.status_code == 200 and retried.json()["status"] == "duplicate"


def test_wait_timeout_must_fit_in_the_write_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With min replicas set, a WAIT timeout not below the write deadline is refused, naming
    both variables; without min replicas it is not checked, and the defaults fit."""
    monkeypatch.setenv("KARTAHOOK_REDIS_MIN_REPLICAS", "1")
    monkeypatch.setenv("KARTAHOOK_REDIS_WAIT_TIMEOUT_MS", "500")
    with pytest.raises(ValueError, match="KARTAHOOK_REDIS_WAIT_TIMEOUT_MS must be below") as info:
        Settings(redis_timeout_s=0.5)
    assert "KARTAHOOK_REDIS_TIMEOUT_S" in str(info.value)
    assert Settings(redis_timeout_s=0.6).redis_wait_timeout_ms == 500
    monkeypatch.setenv("KARTAHOOK_REDIS_MIN_REPLICAS", "0")
    assert Settings(redis_timeout_s=0.5).redis_min_replicas == 0
    monkeypatch.delenv("KARTAHOOK_REDIS_MIN_REPLICAS")
    monkeypatch.delenv("KARTAHOOK_REDIS_WAIT_TIMEOUT_MS")
    defaults = Settings()
    assert defaults.redis_min_replicas == 0
    assert defaults.redis_wait_timeout_ms < defaults.redis_timeout_s * 1000
