"""Request context for every request: request ids and the one log line per request, the
body-size limit, and proxy headers trusted only from configured addresses.

The webhook path does all of this inline (:mod:`service.api.ingest.front`); the other paths get it
from the pure-ASGI middleware here, inside Starlette (:func:`service.api.app.create_app`). The
request id is bound with ``structlog.contextvars`` (every line logged during the request carries
it). The webhook endpoint adds ``source``, ``event_id``, ``payment_id``, ``outcome`` and
``reason`` to the line's fields dict (cheaper than binding four context variables per request);
other handlers may bind with ``structlog.contextvars``. The request line carries both.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.errors import KartahookError
from service.logging import write_json_line

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
REQUEST_ID_HEADER = b"x-request-id"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def trusted_proxy_headers(app: ASGIApp, trusted: Sequence[str]) -> ASGIApp:
    """Honour ``X-Forwarded-For``/``-Proto`` only from the ``trusted`` addresses or CIDRs."""
    if not trusted:
        return app
    return ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))  # type: ignore[arg-type,return-value]


def new_request_id() -> str:
    """A fresh request id."""
    # Unique, not secret: the random module (reseeded in forked children) costs no syscall.
    return random.getrandbits(128).to_bytes(16).hex()


def start_request(scope: Scope) -> tuple[str, dict[str, Any]]:
    """Begin a request's context: its id (``X-Request-ID`` when sane, else a new one), bound
    with ``structlog.contextvars`` and kept in ``scope["state"]``. Returns the id and the log
    line's fields (empty so far)."""
    request_id = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _REQUEST_ID.fullmatch(value):
                request_id = value.decode("ascii")
            break
    if request_id is None:
        request_id = new_request_id()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id, {}


class RequestLog:
    """Writes the one line of a request when it ends (probe and scrape paths at debug level, so
    they do not drown the request log)."""

    def __init__(self) -> None:
        self.log = structlog.get_logger("kartahook.request")
        # Bound on the first line, as structlog's cache_logger_on_first_use does (the lazy proxy
        # costs a bind per call). Processors are looked up through the configured list, which
        # configure_logging and capture_logs change in place.
        self._bound: Any = None

    def write(self, scope: Scope, fields: dict[str, Any], status: int, start: float) -> None:
        """Complete ``fields`` with the request's method, path, status, duration and client,
        and log them."""
        path = scope["path"]
        fields["method"] = scope["method"]
        fields["path"] = path
        fields["status"] = status
        fields["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)
        fields["client"] = (scope.get("client") or ("-",))[0]
        quiet = path in QUIET_PATHS
        if write_json_line("debug" if quiet else "info", "request", fields):
            return
        log = self._bound
        if log is None:
            log = self._bound = self.log.bind()
        if quiet:
            log.debug("request", **fields)
        else:
            log.info("request", **fields)


class RequestContextMiddleware:
    """Request id (echoed in the response) and exactly one structured log line per request,
    written when the request ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.request_log = RequestLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id, fields = start_request(scope)
        status = 500
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.request_log.write(scope, fields, status, start)


class BodyTooLarge(KartahookError):
    """Raised from ``receive`` once more than the limit has arrived."""


def json_response_messages(
    status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[Message, Message]:
    """The two ASGI messages of a small JSON answer."""
    payload = orjson.dumps(body)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": payload}


TOO_LARGE_BODY = {"error": "payload too large"}
# Connection: close, so the server drops the unread rest of a refused body.
TOO_LARGE_HEADERS = ((b"connection", b"close"),)


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none or a malformed one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def limited_receive(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``max_bytes`` arrived."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise BodyTooLarge
        return message

    return limited


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 while streaming: a too-large ``Content-Length``
    is refused before any byte is read, and a chunked body as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send)
                return
            # The HTTP server never delivers more than the declared length.
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive(receive, self.max_bytes), tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        for message in json_response_messages(413, TOO_LARGE_BODY, TOO_LARGE_HEADERS):
            await send(message)
