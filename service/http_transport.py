"""An httpx transport on aiohttp's connection pool.

httpx's own pool (httpcore 1.0 on anyio) scans every pooled connection on each request and, without
``sniffio`` installed, retries a failed import on every event set. ``bench/delivery_client.py``
measured it at 4-25 % of raw aiohttp (0.3-1.2k req/s against 3-9k on this machine), collapsing
as concurrency grows; in the worker's profile the KartaPay fetch through it cost more than the
four deliveries of the payment together. This transport keeps the httpx API (the ``transport=``
seam, the request and response types, the connect and read timeouts) and moves the bytes with
aiohttp, which keeps up. Delivery and the KartaPay client both use it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
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


def _map_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.NetworkError(message, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # A fully read body returns the connection to the pool; a partly read one closes it.
        self._response.release()


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
        session = self._session_now()
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                data=body,
                headers=list(request.headers.multi_items()),
                allow_redirects=False,
                timeout=timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
