"""Ingestion end to end: real uvicorn, real Redis, requests signed with standardwebhooks."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import structlog
from arq.connections import RedisSettings
from arq.worker import Worker, func
from standardwebhooks import Webhook

from service.api.app import create_app
from service.api.ingest.sources import build_sources
from service.domain import events
from service.domain.signing import generate_secret
from service.settings import Settings
from service.store import jobs, layout
from service.store.events import UNROUTABLE_KEY, read_raw_record
from tests.support import serve_app, serve_listeners

OLD_SECRET = generate_secret()
NEW_SECRET = generate_secret()
URL_PATH = "/v1/webhooks/kartapay"


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    return Settings(redis_url=redis_url, sources_file=None, **overrides)


def make_app(redis_url: str, **overrides: Any) -> Any:
    sources = build_sources({"kartapay": {"secrets": [OLD_SECRET, NEW_SECRET]}})
    return create_app(settings_for(redis_url, **overrides), sources)


def event_body(payment_id: str | None = "pay_1", status: str = "captured") -> bytes:
    data: dict[str, Any] = {"status": status}
    if payment_id is not None:
        data["id"] = payment_id
    return orjson.dumps({"type": f"payment.{status}", "data": data})


def signed(
    body: bytes,
    msg_id: str,
    secret: str = NEW_SECRET,
    offset_s: float = 0,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Standard Webhooks headers made by the standardwebhooks package."""
    when = datetime.now(tz=UTC) + timedelta(seconds=offset_s)
    return {
        "content-type": content_type,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(
            msg_id=msg_id, timestamp=when, data=body.decode()
        ),
    }


# The admin listener beside each public URL the fixtures serve: /metrics is served there.
ADMIN_OF: dict[str, str] = {}


@pytest.fixture
async def base_url(redis_url: str) -> AsyncIterator[str]:
    sources = build_sources({"kartapay": {"secrets": [OLD_SECRET, NEW_SECRET]}})
    async with serve_listeners(settings_for(redis_url), sources) as (url, admin):
        ADMIN_OF[url] = admin
        yield url
        del ADMIN_OF[url]


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        yield http


async def post(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post(URL_PATH, content=body, headers=headers)


async def metric_value(client: httpx.AsyncClient, source: str, outcome: str) -> float:
    text = (await client.get(ADMIN_OF[str(client.base_url).rstrip("/")] + "/metrics")).text
    needle = f'kartahook_webhooks_total{{outcome="{outcome}",source="{source}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


async def test_accepted_event_is_stored_as_arq_job_dedupe_and_raw(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """202 with the event id; job, queue entry, dedupe key and raw archive (no signature) exist."""
    body = event_body("pay_42")
    before = await metric_value(client, "kartapay", "accepted")
    response = await post(client, body, signed(body, "msg_accept"))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "event_id": "msg_accept"}
    job_id = layout.event_job_id("kartapay", "msg_accept")
    assert await redis.zscore("arq:queue", job_id) is not None
    job = orjson.loads(await redis.get(layout.ARQ_JOB_PREFIX + job_id))
    assert job["f"] == layout.PROCESS_EVENT and job["t"] is None and job["k"] == {}
    received_at_ms = job["a"][0]["received_at_ms"]
    hint = events.EventHint("kartapay", "msg_accept", "pay_42", received_at_ms)
    assert job["a"] == hint.to_job_args() and job["et"] == received_at_ms
    assert 0 < await redis.pttl(layout.ARQ_JOB_PREFIX + job_id) <= layout.ARQ_EXPIRES_EXTRA_MS
    stored = layout.event_key("pay_42"), layout.event_field("kartapay", "msg_accept")
    raw = read_raw_record(await redis.hget(*stored))  # type: ignore[misc]
    assert raw["body"] == body.decode() and raw["source"] == "kartapay"
    assert "webhook-signature" not in raw["headers"] and raw["headers"]["webhook-id"]
    assert 71 * 3600 < await redis.ttl(layout.event_key("pay_42")) <= 72 * 3600
    assert await metric_value(client, "kartapay", "accepted") == before + 1


async def test_duplicate_is_200_and_queues_nothing(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """The same event again (even re-signed with the other secret) is 200 and adds no job."""
    body = event_body()
    assert (await post(client, body, signed(body, "msg_dup"))).status_code == 202
    again = await post(client, body, signed(body, "msg_dup", secret=OLD_SECRET))
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": "msg_dup"}
    assert await redis.zcard("arq:queue") == 1


async def test_rotation_both_secrets_accepted(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """Events signed with the old and with the new secret are both accepted."""
    for secret, msg_id in ((OLD_SECRET, "msg_rot_old"), (NEW_SECRET, "msg_rot_new")):
        body = event_body(msg_id)
        assert (await post(client, body, signed(body, msg_id, secret=secret))).status_code == 202
    assert await redis.zcard("arq:queue") == 2


@pytest.mark.parametrize("offset_s", [-301, 301])
async def test_replay_outside_tolerance_is_401(
    client: httpx.AsyncClient, redis: aioredis.Redis, offset_s: int
) -> None:
    """Timestamps 301 s old or 301 s ahead: 401, a generic body, nothing stored."""
    body = event_body()
    response = await post(client, body, signed(body, "msg_replay", offset_s=offset_s))
    assert response.status_code == 401
    assert response.json() == {"error": "unauthenticated"}
    assert await redis.dbsize() == 0


async def test_each_rejection_status_from_a_real_request(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """400, 401, 404, 405, 413, 415 and 422, each counted in the metrics; nothing enqueued."""
    body = event_body()
    good = signed(body, "msg_x")
    before = {
        outcome: await metric_value(client, source, outcome)
        for source, outcome in [
            ("kartapay", "malformed"),
            ("kartapay", "unauthenticated"),
            ("unknown", "unknown_source"),
            ("kartapay", "method_not_allowed"),
            ("kartapay", "too_large"),
            ("kartapay", "unsupported_media_type"),
            ("kartapay", "unroutable"),
        ]
    }
    missing_header = {k: v for k, v in good.items() if k != "webhook-signature"}
    assert (await post(client, body, missing_header)).status_code == 400
    not_json = b"{not json"
    assert (await post(client, not_json, signed(not_json, "msg_nj"))).status_code == 400
    wrong = signed(body, "msg_x", secret=generate_secret())
    response = await post(client, body, wrong)
    assert response.status_code == 401 and response.json() == {"error": "unauthenticated"}
    response = await client.post("/v1/webhooks/nosuch", content=body, headers=good)
    assert response.status_code == 404 and response.json() == {"error": "unknown source"}
    response = await client.get(URL_PATH)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    big = b'{"pad": "' + b"x" * (256 * 1024) + b'"}'
    assert (await post(client, big, signed(big, "msg_big"))).status_code == 413
    text_plain = signed(body, "msg_x", content_type="text/plain")
    assert (await post(client, body, text_plain)).status_code == 415
    no_payment = event_body(payment_id=None)
    response = await post(client, no_payment, signed(no_payment, "msg_nopay"))
    assert response.status_code == 422 and response.json()["event_id"] == "msg_nopay"
    kept = [orjson.loads(item) for item in await redis.lrange(UNROUTABLE_KEY, 0, -1)]
    assert [(k["event_id"], k["body"]) for k in kept] == [("msg_nopay", no_payment.decode())]
    assert await redis.zcard("arq:queue") == 0
    for outcome, value in before.items():
        source = "unknown" if outcome == "unknown_source" else "kartapay"
        expected = value + (2 if outcome == "malformed" else 1)
        assert await metric_value(client, source, outcome) == expected, outcome


async def _raw_request(
    base_url: str, head: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_declared_50_mib_body_refused_before_it_is_sent(base_url: str) -> None:
    """Content-Length of 50 MiB: 413 arrives although not one body byte was sent."""
    head = (
        b"POST /v1/webhooks/kartapay HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    reader, writer = await _raw_request(base_url, head)
    status_line = await asyncio.wait_for(reader.readline(), 30)
    await _close(writer)
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_chunked_50_mib_body_refused_while_streaming(base_url: str) -> None:
    """A chunked 50 MiB body is cut off with 413 long before the client could send it all."""
    head = (
        b"POST /v1/webhooks/kartapay HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await _raw_request(base_url, head)
    chunk = b"x" * 65536
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < 50 * 1024 * 1024:
                writer.write(frame)
                await writer.drain()
                sent += len(chunk)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    sender = asyncio.create_task(send_body())
    status_line = await asyncio.wait_for(reader.readline(), 60)
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    await _close(writer)
    assert status_line.startswith(b"HTTP/1.1 413")
    assert sent < 50 * 1024 * 1024


async def test_fifty_concurrent_copies_make_one_job(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """50 concurrent requests with one event id: one 202, forty-nine 200s, exactly one job."""
    body = event_body("pay_conc")
    headers = signed(body, "msg_conc")
    responses = await asyncio.gather(*(post(client, body, headers) for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202]
    assert await redis.zcard("arq:queue") == 1
    assert len(await redis.keys(layout.ARQ_JOB_PREFIX + "*")) == 1


async def test_stock_arq_worker_runs_ingested_jobs(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    """A stock arq Worker(burst=True) with the JSON serializer runs every job ingestion wrote."""
    sent = {}
    for i in range(3):
        body = event_body(f"pay_w{i}")
        assert (await post(client, body, signed(body, f"msg_w{i}"))).status_code == 202
        sent[f"msg_w{i}"] = f"pay_w{i}"
    received: list[dict[str, Any]] = []

    async def process_event(ctx: dict[str, Any], hint: dict[str, Any]) -> None:
        received.append(hint)

    worker = Worker(
        functions=[func(process_event, name=layout.PROCESS_EVENT)],
        burst=True,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        redis_settings=RedisSettings.from_dsn(redis_url),
        handle_signals=False,
        poll_delay=0.05,
    )
    try:
        await worker.main()
    finally:
        with warnings.catch_warnings():  # arq 0.28 calls redis-py's deprecated close()
            warnings.simplefilter("ignore", DeprecationWarning)
            await worker.close()
    assert worker.jobs_complete == 3 and worker.jobs_failed == 0
    hints = [events.EventHint.from_job_arg(arg) for arg in received]
    assert {h.event_id: h.payment_id for h in hints} == sent
    assert all(h.source == "kartapay" and h.received_at_ms > 0 for h in hints)


async def test_health_and_readiness(redis_url: str, redis: aioredis.Redis) -> None:
    """/healthz is 200; /readyz is 200 below the backlog high-water mark and 503 at it."""
    async with (
        serve_app(make_app(redis_url, backlog_high_water=1)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["backlog"] == 0
        body = event_body()
        assert (await post(http, body, signed(body, "msg_backlog"))).status_code == 202
        backlogged = await http.get("/readyz")
        assert backlogged.status_code == 503 and backlogged.json()["status"] == "backlogged"


async def test_request_log_line_has_fields_and_no_secrets(redis_url: str) -> None:
    """One request line per request with request_id, source, ids, status, duration; no secrets."""
    body = event_body("pay_log")
    headers = signed(body, "msg_log")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        async with (
            serve_app(make_app(redis_url)) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            accepted = await post(http, body, {**headers, "x-request-id": "req-abc.1"})
            rejected = await post(http, body, {**headers, "webhook-signature": "v1,AAAA"})
    assert accepted.headers["x-request-id"] == "req-abc.1"
    assert len(rejected.headers["x-request-id"]) == 32
    lines = [e for e in entries if e["event"] == "request" and e.get("path") == URL_PATH]
    assert len(lines) == 2
    ok, bad = lines
    assert ok["request_id"] == "req-abc.1" and ok["status"] == 202
    assert (ok["source"], ok["event_id"], ok["payment_id"]) == ("kartapay", "msg_log", "pay_log")
    assert ok["outcome"] == "accepted" and ok["duration_ms"] >= 0
    assert bad["status"] == 401 and bad["outcome"] == "unauthenticated" and bad["reason"]
    assert bad["request_id"] == rejected.headers["x-request-id"]
    everything = repr(entries)
    for secret_value in (NEW_SECRET, OLD_SECRET, headers["webhook-signature"], "v1,AAAA"):
        assert secret_value not in everything
    assert NEW_SECRET.removeprefix("whsec_") not in everything


@pytest.mark.parametrize(
    ("trusted", "expected"), [("127.0.0.1", "203.0.113.7"), ("10.0.0.1", None)]
)
async def test_forwarded_for_only_from_trusted_proxies(
    redis_url: str, trusted: str, expected: str | None
) -> None:
    """X-Forwarded-For sets the client address only when the peer is a configured proxy."""
    with structlog.testing.capture_logs() as entries:
        async with (
            serve_app(make_app(redis_url, trusted_proxies=[trusted]), proxy_headers=False) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            await http.get("/nothing-here", headers={"x-forwarded-for": "203.0.113.7"})
    (line,) = [e for e in entries if e["event"] == "request"]
    assert line["status"] == 404
    assert line["client"] == (expected or "127.0.0.1")


async def test_script_cache_flush_is_survived(
    client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """After SCRIPT FLUSH (NOSCRIPT), the script is reloaded and the event still gets 202."""
    first = event_body("pay_s1")
    assert (await post(client, first, signed(first, "msg_s1"))).status_code == 202
    await redis.script_flush()
    second = event_body("pay_s2")
    assert (await post(client, second, signed(second, "msg_s2"))).status_code == 202
    assert await redis.zcard("arq:queue") == 2
