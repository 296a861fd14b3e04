"""An httpx transport on aiohttp's connection pool.

httpx's own pool (httpcore 1.0 on anyio) scans every pooled connection on each request and, without
``sniffio`` installed, retries a failed import on every event set. ``bench/delivery_client.py``
measured it at 4-25 % of raw aiohttp (0.3-1.2k req/s against 3-9k on this machine), collapsing
as concurrency grows; in the worker's profile the KartaPay fetch through it cost more than the
four deliveries of the payment together. This transport keeps the httpx API (the ``transport=``
seam, the request and response types, per-phase timeouts) and moves the bytes with
aiohttp, which keeps up. Delivery and the KartaPay client both use it.

Both send through :func:`exchange`, which skips httpx's request and response objects on this
transport: building and reading them cost the worker as much CPU as aiohttp's own work per
request (docs/decisions/http-exchange.md). On any other transport (httpx's own pool, the tests'
``httpx.MockTransport``) it goes through them, with the same result.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.targets import Address, ForbiddenAddress, parse_address

AddressGuard = Callable[[Address, int], str | None]
"""Says why an address:port may not be connected to (None: it may)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, with every address it returns checked by ``guard`` before aiohttp
    connects to it: a name that resolves to a refused address is refused as a whole
    (:class:`ForbiddenAddress`), so the address checked is the address connected to. (aiohttp
    does not resolve IP literals: callers check those themselves, no DNS involved.)"""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = parse_address(result["host"])
            reason = None if address is None else self._guard(address, result["port"] or port)
            if reason is not None:
                raise ForbiddenAddress(f"{host} resolves to {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _map_error(exc: BaseException, request: httpx.Request | None) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.NetworkError(message, request=request)


@dataclass(slots=True)
class Answer:
    """What :func:`exchange` has read so far, filled in as it arrives: a failure part-way
    through the body leaves the status, the headers and what came of the body."""

    status: int = 0
    """0 until the status line has come."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Case-insensitive, as the transport's own header types are."""
    body: bytes = b""


async def exchange(
    transport: httpx.AsyncBaseTransport,
    answer: Answer,
    method: str,
    url: httpx.URL,
    headers: Mapping[str, str],
    body: bytes | None = None,
    *,
    phase_timeout_s: float,
    read_at_most: int | None = None,
) -> None:
    """Send one request on ``transport`` and fill ``answer``: its status and headers, then its
    body, all of it or its first ``read_at_most`` bytes (the connection is then closed rather
    than pooled). ``phase_timeout_s`` bounds the connect and each read, as httpx's timeouts do;
    the caller bounds the whole. Raises httpx's exceptions (``httpx.TimeoutException``,
    ``httpx.TransportError``), whichever transport moves the bytes."""
    if isinstance(transport, AiohttpTransport):
        await transport.exchange(answer, method, url, headers, body, phase_timeout_s, read_at_most)
        return
    phases = dict.fromkeys(("connect", "read", "write", "pool"), phase_timeout_s)
    request = httpx.Request(
        method, url, headers=headers, content=body, extensions={"timeout": phases}
    )
    response = await transport.handle_async_request(request)
    try:
        answer.status = response.status_code
        answer.headers = response.headers
        if response.is_stream_consumed:  # a response built with its content (MockTransport)
            answer.body = response.content[:read_at_most]
            return
        async for chunk in response.aiter_raw():
            answer.body += chunk
            if read_at_most is not None and len(answer.body) >= read_at_most:
                break
    finally:
        await response.aclose()


@cache
def _timeout(phase_s: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=phase_s, sock_read=phase_s)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Every pooled connection kept alive (``limit`` connections, ``keepalive_s`` idle)."""

    def __init__(
        self, max_connections: int, keepalive_s: float = 30.0, guard: AddressGuard | None = None
    ) -> None:
        self._limit = max_connections
        self._keepalive_s = keepalive_s
        self._guard = guard
        """Checks every address a host name resolves to before connecting (delivery)."""
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_s,
                resolver=None if self._guard is None else GuardedResolver(self._guard),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes by Content-Encoding itself
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's transport API, for a caller that holds an ``httpx.Request``: one
        :meth:`exchange` (repeated headers joined, as httpx's mapping gives them), the body read
        whole, under the request's read timeout (kartahook's clients call :func:`exchange`)."""
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        answer = Answer()
        await self.exchange(
            answer,
            request.method,
            request.url,
            request.headers,
            await request.aread(),
            timeouts.get("read"),
            None,
        )
        return httpx.Response(
            status_code=answer.status,
            headers=list(answer.headers.items()),
            content=answer.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def exchange(
        self,
        answer: Answer,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        body: bytes | None,
        phase_timeout_s: float | None,
        read_at_most: int | None,
    ) -> None:
        """:func:`exchange` on aiohttp's objects alone (``phase_timeout_s`` None: no timeout)."""
        for name, value in headers.items():
            if not value.isascii():  # aiohttp would send it as UTF-8; httpx refuses it
                raise ValueError(f"header {name!r} has a character that is not ASCII")
        session = self._session_now()
        try:
            async with session.request(
                method,
                str(url),
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(phase_timeout_s),
            ) as response:
                answer.status = response.status
                answer.headers = response.headers
                async for chunk in response.content.iter_any():
                    answer.body += chunk
                    if read_at_most is not None and len(answer.body) >= read_at_most:
                        break
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, None) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
