"""The webhook front: webhook paths served outside Starlette with the same request id, proxy
handling, body limit and log line as the other paths; other paths still reach the router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog

from service.api.app import create_app
from service.api.ingest.sources import build_sources
from service.domain.signing import generate_secret, sign_headers
from service.settings import Settings
from tests.support import serve_app

SECRET = generate_secret()
URL_PATH = "/v1/webhooks/kartapay"
BODY = b'{"type":"payment.captured","data":{"id":"pay_front"}}'


def make_app(redis_url: str, **overrides: Any) -> Any:
    settings = Settings(redis_url=redis_url, sources_file=None, **overrides)
    return create_app(settings, build_sources({"kartapay": {"secrets": [SECRET]}}))


def signed(msg_id: str, body: bytes = BODY) -> dict[str, str]:
    return {"content-type": "application/json", **sign_headers(SECRET, msg_id, body)}


def request_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["event"] == "request"]


@pytest.fixture
async def logged_client(
    redis_url: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        async with (
            serve_app(make_app(redis_url, max_body_bytes=1024)) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            yield http, entries


async def test_other_paths_under_the_webhook_prefix_reach_the_router(
    logged_client: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    """/v1/webhooks/ and /v1/webhooks/<a>/<b> are the router's 404, with a request id and a line;
    /healthz still answers through Starlette."""
    http, entries = logged_client
    for path in ("/v1/webhooks/", "/v1/webhooks/kartapay/extra"):
        response = await http.post(path, content=BODY, headers={"x-request-id": "rid-" + path[-1]})
        assert response.status_code == 404 and response.headers["x-request-id"] == "rid-" + path[-1]
    healthz = await http.get("/healthz")
    assert healthz.status_code == 200 and len(healthz.headers["x-request-id"]) == 32
    lines = request_lines(entries)
    assert [(line["path"], line["status"]) for line in lines] == [
        ("/v1/webhooks/", 404),
        ("/v1/webhooks/kartapay/extra", 404),
        ("/healthz", 200),
    ]
    assert all("outcome" not in line for line in lines)


async def test_webhook_answer_carries_the_request_id_and_one_line(
    logged_client: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    """A webhook's answer echoes X-Request-ID (or a new 32-hex one), and each request has one
    line with its id and the endpoint's fields."""
    http, entries = logged_client
    given = await http.post(URL_PATH, content=BODY, headers={**signed("m1"), "x-request-id": "a.b"})
    new = await http.post(URL_PATH, content=BODY, headers=signed("m2"))
    insane_id = {**signed("m3"), "x-request-id": "a b"}
    insane = await http.post(URL_PATH, content=BODY, headers=insane_id)
    assert (given.status_code, new.status_code, insane.status_code) == (202, 202, 202)
    assert given.headers["x-request-id"] == "a.b"
    ids = [new.headers["x-request-id"], insane.headers["x-request-id"]]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids) and ids[0] != ids[1]
    lines = request_lines(entries)
    assert [line["request_id"] for line in lines] == ["a.b", *ids]
    assert [line["event_id"] for line in lines] == ["m1", "m2", "m3"]
    assert all(line["outcome"] == "accepted" and line["status"] == 202 for line in lines)


async def test_chunked_webhook_over_the_limit_is_413_counted_and_logged(
    logged_client: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    """A chunked body passing the limit on a webhook path: 413 with Connection: close, a line
    with outcome too_large and the request id; a chunked body within the limit is accepted."""
    http, entries = logged_client

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b" " * 400

    response = await http.post(
        URL_PATH, content=chunks(4), headers={**signed("big"), "x-request-id": "big-1"}
    )
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert response.json() == {"error": "payload too large"}

    async def small() -> AsyncIterator[bytes]:
        yield BODY[:10]
        yield BODY[10:]

    accepted = await http.post(URL_PATH, content=small(), headers=signed("chunked"))
    assert accepted.status_code == 202
    too_large, ok = request_lines(entries)
    assert (too_large["status"], too_large["outcome"], too_large["source"]) == (
        413,
        "too_large",
        "kartapay",
    )
    assert too_large["request_id"] == "big-1"
    assert (ok["status"], ok["event_id"]) == (202, "chunked")


@pytest.mark.parametrize(
    ("trusted", "expected"), [("127.0.0.1", "203.0.113.9"), ("10.0.0.1", "127.0.0.1")]
)
async def test_forwarded_for_on_the_webhook_path_only_from_trusted_proxies(
    redis_url: str, trusted: str, expected: str
) -> None:
    """The webhook path takes X-Forwarded-For only from a configured proxy, as other paths do."""
    with structlog.testing.capture_logs() as entries:
        async with (
            serve_app(make_app(redis_url, trusted_proxies=[trusted]), proxy_headers=False) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            headers = {**signed("fwd"), "x-forwarded-for": "203.0.113.9"}
            assert (await http.post(URL_PATH, content=BODY, headers=headers)).status_code == 202
    (line,) = request_lines(entries)
    assert line["client"] == expected
