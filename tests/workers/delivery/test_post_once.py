"""One delivery attempt's HTTP exchange (``post_once``) against real sockets on 127.0.0.1, on
both transports: aiohttp's fast path (``AiohttpTransport.exchange``) and httpx's own pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from service.http_transport import AiohttpTransport
from service.settings import Settings
from workers.delivery.client import BODY_HEAD_BYTES, build_transport, post_once

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TRANSPORTS = ["aiohttp", "httpx"]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[httpx.URL]:
    """A TCP server on a free port of 127.0.0.1 that answers with ``handler``'s bytes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield httpx.URL(f"http://127.0.0.1:{port}/hook")
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request's head and body (its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def transport_for(kind: str) -> AsyncIterator[httpx.AsyncBaseTransport]:
    async with build_transport(Settings(delivery_http_transport=kind)) as transport:
        yield transport


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_status_retry_after_and_the_first_kib_of_the_answer(kind: str) -> None:
    """The status, Retry-After (any case) and at most the first KiB of a long body are kept, and
    the request carries the body and headers given."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        body = b"x" * 5000
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    async with raw_server(handler) as url, transport_for(kind) as transport:
        result = await post_once(
            transport,
            url,
            {"content-type": "application/json", "webhook-id": "msg_1"},
            b'{"a":1}',
            5.0,
        )
    assert (result.status, result.retry_after, result.error) == (503, "7", None)
    assert result.body_head == "x" * BODY_HEAD_BYTES
    request = seen[0].lower()
    assert request.startswith(b"post /hook http/1.1\r\n")
    assert b"\r\nwebhook-id: msg_1\r\n" in request and b"\r\ncontent-length: 7\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a":1}')


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_an_answer_cut_off_after_its_status_is_judged_by_the_status(kind: str) -> None:
    """A 200 whose body breaks off part-way is a success with what came of the body, not an
    error: the subscriber has answered."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\npartial")
        await writer.drain()

    async with raw_server(handler) as url, transport_for(kind) as transport:
        result = await post_once(transport, url, {}, b"{}", 5.0)
    assert (result.status, result.error, result.body_head) == (200, None, "partial")
    assert result.succeeded


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_silent_subscriber_is_a_timeout_with_no_status(kind: str) -> None:
    """A subscriber that reads the request and never answers ends the attempt at its deadline
    with the error "timeout" and no status."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()

    async with raw_server(handler) as url, transport_for(kind) as transport:
        result = await post_once(transport, url, {}, b"{}", 0.2)
        release.set()
    assert (result.status, result.error, result.succeeded) == (None, "timeout", False)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_closed_port_is_a_connect_error(kind: str) -> None:
    """Nothing listening: the attempt's error says it could not connect, and no status."""
    async with raw_server(read_request) as url:
        pass  # the port is free again once the server is closed
    async with transport_for(kind) as transport:
        result = await post_once(transport, url, {}, b"{}", 5.0)
    assert result.status is None and result.error is not None
    assert result.error.startswith("connect error"), result.error


async def test_the_aiohttp_transport_still_serves_httpx_clients() -> None:
    """Through httpx's own client, the aiohttp transport sends the request as given and gives
    back the status, the headers (repeated ones kept) and the whole body."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        body = b"y" * 3000
        writer.write(
            b"HTTP/1.1 201 Created\r\nX-Tag: a\r\nX-Tag: b\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    async with (
        raw_server(handler) as url,
        httpx.AsyncClient(transport=AiohttpTransport(4), timeout=5.0) as client,
    ):
        response = await client.put(url, content=b"payload", headers={"X-Me": "1"})
    assert response.status_code == 201 and response.content == b"y" * 3000
    assert response.headers.get_list("x-tag") == ["a", "b"]
    request = seen[0].lower()
    assert request.startswith(b"put /hook http/1.1\r\n") and b"\r\nx-me: 1\r\n" in request
    assert request.endswith(b"\r\n\r\npayload")
