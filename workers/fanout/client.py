"""The delivery HTTP client and one attempt.

httpx's API with keep-alive for every pooled connection, redirects never followed, and one
overall deadline per attempt (httpx's own timeouts are per phase; a subscriber that trickles
bytes must not hold a worker past 10 s). The bytes move on :class:`AiohttpTransport` by default
(``KARTAHOOK_DELIVERY_HTTP_TRANSPORT=httpx`` for httpx's own pool, with
``max_keepalive_connections`` = ``max_connections``): ``bench/delivery_client.py`` measured httpx's
pool far behind raw aiohttp (docs/fanout.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from service.settings import Settings
from workers.fanout.transport import AiohttpTransport

BODY_HEAD_BYTES = 1024


def build_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The shared delivery client; ``transport`` is the test seam."""
    if transport is None and settings.delivery_http_transport == "aiohttp":
        transport = AiohttpTransport(settings.delivery_max_connections, keepalive_s=30.0)
    limits = httpx.Limits(
        max_connections=settings.delivery_max_connections,
        max_keepalive_connections=settings.delivery_max_connections,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.delivery_timeout_s),
        limits=limits,
        follow_redirects=False,
        transport=transport,
        trust_env=False,
    )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST came to: a status, or an error when no answer came."""

    status: int | None
    error: str | None
    latency_ms: float
    body_head: str
    retry_after: str | None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {exc}" if str(exc) else "connect error"
    if isinstance(exc, httpx.HTTPError):
        name = type(exc).__name__
        return f"{name}: {exc}" if str(exc) else name
    return f"{type(exc).__name__}: {exc}"


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: bytes,
    timeout_s: float,
) -> AttemptResult:
    """POST ``body`` and read at most the first KiB of the answer; never raises for the network."""
    started = time.perf_counter()
    status: int | None = None
    retry_after: str | None = None
    head = bytearray()
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = response.headers.get("retry-after")
                async for chunk in response.aiter_raw():
                    head.extend(chunk)
                    if len(head) >= BODY_HEAD_BYTES:
                        break
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        if status is None:
            error = _describe(exc)
    latency_ms = (time.perf_counter() - started) * 1000
    return AttemptResult(
        status=status,
        error=error,
        latency_ms=latency_ms,
        body_head=bytes(head[:BODY_HEAD_BYTES]).decode("utf-8", "replace"),
        retry_after=retry_after,
    )
