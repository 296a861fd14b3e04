"""The front door's hardening (issue 12, item 1), from real requests over real sockets to uvicorn
run with the options ``kartahook serve`` uses (its protocol class and limits): huge timestamps,
chunked trailers, the header-block limit, the header-read timeout, the connection cap, and
UTF-8 webhook-ids signed by the Standard Webhooks reference library."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import structlog
import uvicorn
from standardwebhooks.webhooks import Webhook

from kartahook.commands.serve import HTTP_PROTOCOL, uvicorn_options
from service.api import http_protocol
from service.domain import signing
from service.metrics import render_latest
from service.store.server import free_port
from tests.api.ingest.test_ingest import NEW_SECRET, URL_PATH, event_body, make_app, signed

Response = tuple[int, dict[str, str], bytes]


@contextlib.asynccontextmanager
async def serve_like_cli(redis_url: str, **env: str) -> AsyncIterator[int]:
    """The test app under uvicorn with ``kartahook serve``'s options (``KARTAHOOK_<NAME>``
    limits from ``env``); yields the port."""
    port = free_port()
    options = uvicorn_options("127.0.0.1", port, 1, 1.0)
    del options["workers"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(f"KARTAHOOK_{name.upper()}", value)
        server = uvicorn.Server(uvicorn.Config(make_app(redis_url), **options))
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
            assert time.monotonic() < deadline, "server did not start"
            await asyncio.sleep(0.01)
        try:
            yield port
        finally:
            server.should_exit = True
            await task


async def read_response(reader: asyncio.StreamReader) -> Response | None:
    """One HTTP/1.1 response (Content-Length framed), or None when the connection closed first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", f"partial response {exc.partial!r}"
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def exchange(port: int, data: bytes) -> Response | None:
    """Send ``data`` on a fresh connection, read one response, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(
    headers: dict[str, str] | list[tuple[bytes, bytes]], body: bytes, chunked: bytes | None = None
) -> bytes:
    """A raw POST to the kartapay source; ``chunked``: the body sent as one chunk, then these
    trailer lines."""
    pairs = (
        [(name.encode(), value.encode()) for name, value in headers.items()]
        if isinstance(headers, dict)
        else headers
    )
    lines = [b"POST " + URL_PATH.encode() + b" HTTP/1.1", b"host: test"]
    lines += [name + b": " + value for name, value in pairs]
    if chunked is None:
        lines.append(b"content-length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    lines.append(b"transfer-encoding: chunked")
    framed = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n" + chunked + b"\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + framed


async def metric(port: int, source: str, outcome: str) -> float:
    """The counter as the admin listener's /metrics renders it (the server runs in this process;
    the public port serves no /metrics)."""
    text = render_latest()[0].decode()
    needle = f'kartahook_webhooks_total{{outcome="{outcome}",source="{source}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


def test_serve_uses_the_hardened_protocol() -> None:
    """`kartahook serve`'s uvicorn options name the hardened protocol class."""
    assert uvicorn_options("127.0.0.1", 1, 1, 1.0)["http"] == HTTP_PROTOCOL
    assert http_protocol.HTTP_PROTOCOL == HTTP_PROTOCOL


@pytest.mark.parametrize("digits", [309, 400, 4301, 15_000])
async def test_huge_timestamp_is_400_counted_and_logged(redis_url: str, digits: int) -> None:
    """A webhook-timestamp of 309+ digits is 400 malformed (not 500), counted and logged."""
    body = event_body()
    headers = {**signed(body, f"msg_huge_{digits}"), "webhook-timestamp": "9" * digits}
    with structlog.testing.capture_logs() as entries:
        async with serve_like_cli(redis_url) as port:
            before = await metric(port, "kartapay", "malformed")
            answer = await exchange(port, request(headers, body))
            assert answer is not None
            assert answer[0] == 400 and orjson.loads(answer[2]) == {"error": "malformed request"}
            assert await metric(port, "kartapay", "malformed") == before + 1
    line = next(e for e in entries if e["event"] == "request" and e.get("path") == URL_PATH)
    assert (line["status"], line["source"], line["outcome"]) == (400, "kartapay", "malformed")


@pytest.mark.parametrize("value", ["-1", "1e9", "1.5", "", "1_700_000_000", "+1", "١٢٣"])
def test_timestamps_that_are_not_plain_integers_never_verify(value: str) -> None:
    """signing.verify refuses non-integer or out-of-range timestamps with a SignatureError."""
    keys = [signing.decode_secret(NEW_SECRET)]
    headers = {"webhook-id": "m", "webhook-timestamp": value, "webhook-signature": "v1,AAAA"}
    with pytest.raises(signing.SignatureError):
        signing.verify(keys, headers, b"{}")


async def test_trailer_signature_is_not_a_header(redis_url: str) -> None:
    """A valid signature sent only in a chunked trailer is not honoured: 400, nothing stored."""
    body = event_body()
    headers = signed(body, "msg_trailer_sig")
    signature = headers.pop("webhook-signature")
    trailer = b"webhook-signature: " + signature.encode() + b"\r\n"
    async with serve_like_cli(redis_url) as port:
        answer = await exchange(port, request(headers, body, chunked=trailer))
        assert answer is not None and answer[0] == 400
        control = await exchange(port, request(signed(body, "msg_trailer_ok"), body, chunked=b""))
        assert control is not None and control[0] == 202


async def test_trailer_id_and_content_type_do_not_override_headers(redis_url: str) -> None:
    """Trailer webhook-id and content-type are ignored: the header block's values are used."""
    body = event_body()
    headers = signed(body, "msg_header_id")
    trailers = b"webhook-id: msg_trailer_id\r\ncontent-type: text/plain\r\n"
    async with serve_like_cli(redis_url) as port:
        answer = await exchange(port, request(headers, body, chunked=trailers))
    assert answer is not None and answer[0] == 202
    assert orjson.loads(answer[2])["event_id"] == "msg_header_id"


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
async def test_large_header_block_is_431_json_counted_and_logged(redis_url: str, size: int) -> None:
    """A 64 KiB or 1 MiB header block gets a 431 JSON answer, a metric and a request line."""
    body = event_body()
    headers = {**signed(body, "msg_big_head"), "x-padding": "a" * size}
    with structlog.testing.capture_logs() as entries:
        async with serve_like_cli(redis_url) as port:
            before = await metric(port, "kartapay", "headers_too_large")
            answer = await exchange(port, request(headers, body))
            assert answer is not None
            status, answer_headers, payload = answer
            assert status == 431 and answer_headers["content-type"] == "application/json"
            assert orjson.loads(payload) == {"error": "request header fields too large"}
            assert len(answer_headers["x-request-id"]) == 32
            assert await metric(port, "kartapay", "headers_too_large") == before + 1
    line = next(e for e in entries if e["event"] == "request" and e.get("status") == 431)
    assert (line["source"], line["outcome"], line["path"]) == (
        "kartapay",
        "headers_too_large",
        URL_PATH,
    )


async def test_header_block_refused_before_it_ends(redis_url: str) -> None:
    """An endless header line is answered 431 after the limit, without waiting for its end."""
    async with serve_like_cli(redis_url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST " + URL_PATH.encode() + b" HTTP/1.1\r\nx-endless: ")
        writer.write(b"b" * 40_000)  # no end of line, ever
        await writer.drain()
        answer = await read_response(reader)
        writer.close()
    assert answer is not None and answer[0] == 431


async def test_header_limit_is_configurable_and_bounds_what_passes(redis_url: str) -> None:
    """With KARTAHOOK_MAX_HEADER_BYTES=4096 a 6 KiB block is 431 and a 3 KiB block passes."""
    body = event_body()
    async with serve_like_cli(redis_url, max_header_bytes="4096") as port:
        big = {**signed(body, "msg_6k"), "x-padding": "a" * 6 * 1024}
        small = {**signed(body, "msg_3k"), "x-padding": "a" * 3 * 1024}
        big_answer = await exchange(port, request(big, body))
        small_answer = await exchange(port, request(small, body))
    assert big_answer is not None and big_answer[0] == 431
    assert small_answer is not None and small_answer[0] == 202


async def test_trickled_header_blocks_get_408_and_are_closed(redis_url: str) -> None:
    """Fifty connections trickling their header blocks are each answered 408 and closed."""

    async def trickle(port: int) -> tuple[int | None, bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST " + URL_PATH.encode() + b" HTTP/1.1\r\nx-slow: " + b"s" * 1000

        async def send_slowly() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(send_slowly())
        answer = await read_response(reader)
        rest = await reader.read()
        still_sending = not sender.done()
        sender.cancel()
        writer.close()
        return (answer[0] if answer else None), rest, still_sending

    async with serve_like_cli(redis_url, header_timeout_s="0.5") as port:
        results = await asyncio.gather(*(trickle(port) for _ in range(50)))
    assert all(status == 408 for status, _, _ in results), results
    assert all(rest == b"" for _, rest, _ in results)  # closed after the 408
    assert all(still for _, _, still in results)  # answered while still trickling


async def test_silent_connection_is_closed_at_header_timeout(redis_url: str) -> None:
    """A connection that never sends a byte is closed, without an answer, at the timeout."""
    async with serve_like_cli(redis_url, header_timeout_s="0.3") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()


async def test_keep_alive_request_after_the_first_still_has_no_early_timeout(
    redis_url: str,
) -> None:
    """Requests within the header timeout on one keep-alive connection are all answered."""
    body = event_body()
    async with serve_like_cli(redis_url, header_timeout_s="2") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for index in range(3):
            writer.write(request(signed(body, f"msg_ka_{index}"), body))
            await writer.drain()
            answer = await read_response(reader)
            assert answer is not None and answer[0] == 202
        writer.close()


async def test_connection_cap_closes_extra_connections(redis_url: str) -> None:
    """Over KARTAHOOK_MAX_CONNECTIONS a connection is closed unanswered; under it, served."""
    body = event_body()
    async with serve_like_cli(redis_url, max_connections="4") as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            writer.write(request(signed(body, "msg_over_cap"), body))
        assert await reader.read() == b""  # closed, no answer
        writer.close()
        held_reader, held_writer = held[0]
        held_writer.write(request(signed(body, "msg_under_cap"), body))
        answer = await read_response(held_reader)
        assert answer is not None and answer[0] == 202
        for _, held_w in held:
            held_w.close()
            with contextlib.suppress(ConnectionError):
                await held_w.wait_closed()

        async def served_again() -> bool:
            again = await exchange(port, request(signed(body, "msg_after_cap"), body))
            return again is not None and again[0] in (200, 202)

        deadline = time.monotonic() + 10
        while not await served_again():
            assert time.monotonic() < deadline, "never served after connections closed"
            await asyncio.sleep(0.05)


def reference_headers(msg_id: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """Headers signed by the standardwebhooks package, the id sent as UTF-8 bytes."""
    when = datetime.now(tz=UTC)
    signature = Webhook(NEW_SECRET).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    return [
        (b"content-type", b"application/json"),
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", str(int(when.timestamp())).encode()),
        (b"webhook-signature", signature.encode()),
    ]


async def test_utf8_webhook_id_signed_by_reference_library_is_accepted(redis_url: str) -> None:
    """A non-ASCII webhook-id signed as the reference library does is accepted, id intact."""
    body = event_body("pay_utf8")
    msg_id = "évt-ü-€-1"
    headers = reference_headers(msg_id, body)
    reference: dict[str, Any] = {k.decode(): v.decode() for k, v in headers}
    Webhook(NEW_SECRET).verify(body, reference)  # the reference library accepts it too
    async with serve_like_cli(redis_url) as port:
        answer = await exchange(port, request(headers, body))
    assert answer is not None and answer[0] == 202
    assert orjson.loads(answer[2])["event_id"] == msg_id


async def test_non_utf8_webhook_id_is_refused_not_5xx(redis_url: str) -> None:
    """An id that is not UTF-8 (latin-1 bytes), signed over its latin-1 reading, is 401."""
    body = event_body()
    headers = reference_headers("évt", body)
    headers[1] = (b"webhook-id", "évt".encode("latin-1"))
    async with serve_like_cli(redis_url) as port:
        answer = await exchange(port, request(headers, body))
    assert answer is not None and answer[0] == 401


def test_verify_agrees_with_reference_library_on_unicode_ids() -> None:
    """signing.verify accepts what the reference library signs for non-ASCII ids."""
    body = b'{"data":{"id":"p"}}'
    for msg_id in ("évt", "支付-1", "emoji-\U0001f600", "a.b.c"):
        when = datetime.now(tz=UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(NEW_SECRET).sign(msg_id, when, body.decode()),
        }
        assert signing.verify([signing.decode_secret(NEW_SECRET)], headers, body) == msg_id
