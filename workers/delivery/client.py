"""The delivery transport and one attempt.

A delivery is one :func:`service.http_transport.exchange` on an httpx transport (the I/O seam;
tests pass ``httpx.MockTransport``), without an ``httpx.AsyncClient`` on top: the client's
request building, header merging and cookie handling cost more CPU than the transport itself
(worker profile, docs/fanout.md), and delivery needs none of them; on the aiohttp transport
httpx's request and response objects are skipped too (docs/decisions/http-exchange.md).
Transports never follow redirects.
Keep-alive for every pooled connection, and one overall deadline per attempt (httpx's own
timeouts are per phase; a subscriber that trickles bytes must not hold a worker past 10 s).
The bytes move on :class:`AiohttpTransport` by default (``KARTAHOOK_DELIVERY_HTTP_TRANSPORT=httpx``
for httpx's own pool, with ``max_keepalive_connections`` = ``max_connections``):
``bench/delivery_client.py`` measured httpx's pool far behind raw aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from service.http_transport import AddressGuard, AiohttpTransport, Answer, exchange
from service.settings import Settings
from service.targets import forbidden_cause

BODY_HEAD_BYTES = 1024


def build_transport(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    guard: AddressGuard | None = None,
) -> httpx.AsyncBaseTransport:
    """The worker's one delivery transport; ``transport`` is the test seam. ``guard`` checks
    every address a subscriber's host name resolves to before connecting (aiohttp transport;
    see ``workers.delivery.guard`` for the httpx one)."""
    if transport is not None:
        return transport
    if settings.delivery_http_transport == "aiohttp":
        return AiohttpTransport(settings.delivery_max_connections, keepalive_s=30.0, guard=guard)
    limits = httpx.Limits(
        max_connections=settings.delivery_max_connections,
        max_keepalive_connections=settings.delivery_max_connections,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncHTTPTransport(limits=limits)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST came to: a status, or an error when no answer came."""

    status: int | None
    error: str | None
    latency_ms: float
    body_head: str
    retry_after: str | None
    forbidden: str | None = None
    """Set when the connect path refused the address (one of kartahook's own listeners)."""

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def describe_error(exc: BaseException, headers: dict[str, str] | None = None) -> str:
    """``exc`` as an attempt's error: one line, at most 500 characters, and no header value
    (an HTTP client's message may quote the value it refused: a token, a signature)."""
    text = _name(exc)
    for value in (headers or {}).values():
        if len(value) < 3:
            continue
        for form in (value, repr(value)[1:-1], repr(value.encode("utf-8", "replace"))[2:-1]):
            text = text.replace(form, "***")
    return " ".join(text.split())[:500]


def _name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {exc}" if str(exc) else "connect error"
    if isinstance(exc, httpx.HTTPError):
        name = type(exc).__name__
        return f"{name}: {exc}" if str(exc) else name
    return f"{type(exc).__name__}: {exc}"


async def post_once(
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    headers: dict[str, str],
    body: bytes,
    timeout_s: float,
) -> AttemptResult:
    """POST ``body`` and read at most the first KiB of the answer. Never raises (but for
    cancellation): whatever fails, building the request included, is the result's ``error``."""
    started = time.perf_counter()
    answer = Answer()
    error: str | None = None
    forbidden: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            await exchange(
                transport,
                answer,
                "POST",
                url,
                headers,
                body,
                phase_timeout_s=timeout_s,
                read_at_most=BODY_HEAD_BYTES,
            )
    except Exception as exc:  # every failure is an attempt's error, never the job's exception
        if not answer.status:
            error = describe_error(exc, headers)
            refused = forbidden_cause(exc)
            forbidden = None if refused is None else refused.reason
    latency_ms = (time.perf_counter() - started) * 1000
    return AttemptResult(
        status=answer.status or None,
        error=error,
        latency_ms=latency_ms,
        body_head=answer.body[:BODY_HEAD_BYTES].decode("utf-8", "replace"),
        retry_after=answer.headers.get("retry-after"),
        forbidden=forbidden,
    )
