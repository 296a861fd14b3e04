"""Pure-ASGI middleware: request ids and the one log line per request, the body-size limit,
and proxy headers trusted only from configured addresses.

Order in :func:`service.app.create_app` (outermost first): proxy headers, request context,
body limit. The request id is bound with ``structlog.contextvars`` (every line logged during the
request carries it). The webhook endpoint adds ``source``, ``event_id``, ``payment_id``,
``outcome`` and ``reason`` to :func:`request_log_fields` (a dict, cheaper than binding four
context variables per request); other handlers may bind with ``structlog.contextvars``. The
request line carries both.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
REQUEST_ID_HEADER = b"x-request-id"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
LOG_FIELDS = "log_fields"


def request_log_fields(scope: Scope) -> dict[str, Any]:
    """The fields of this request's log line that handlers add (kept in ``scope["state"]``)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    fields: dict[str, Any] | None = state.get(LOG_FIELDS)
    if fields is None:
        fields = state[LOG_FIELDS] = {}
    return fields


def trusted_proxy_headers(app: ASGIApp, trusted: Sequence[str]) -> ASGIApp:
    """Honour ``X-Forwarded-For``/``-Proto`` only from the ``trusted`` addresses or CIDRs."""
    if not trusted:
        return app
    return ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))  # type: ignore[arg-type,return-value]


class RequestContextMiddleware:
    """Request id (``X-Request-ID`` honoured when sane, else generated, echoed in the response)
    and exactly one structured log line per request, written when the request ends.

    Probe and scrape paths log at debug level so they do not drown the request log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = structlog.get_logger("kartahook.request")
        # Bound on the first request, as structlog's cache_logger_on_first_use does (the lazy
        # proxy costs a bind per call). Processors are looked up through the configured list,
        # which configure_logging and capture_logs change in place.
        self._bound: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if _REQUEST_ID.fullmatch(value):
                    request_id = value.decode("ascii")
                break
        if request_id is None:
            request_id = os.urandom(16).hex()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        fields: dict[str, Any] = {}
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[LOG_FIELDS] = fields
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
            path = scope["path"]
            fields["method"] = scope["method"]
            fields["path"] = path
            fields["status"] = status
            fields["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)
            fields["client"] = (scope.get("client") or ("-",))[0]
            log = self._bound
            if log is None:
                log = self._bound = self.log.bind()
            if path in QUIET_PATHS:
                log.debug("request", **fields)
            else:
                log.info("request", **fields)


class BodyTooLarge(Exception):
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


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 while streaming: a too-large ``Content-Length``
    is refused before any byte is read, and a chunked body as soon as it passes the limit.

    ``on_reject(scope)`` records the rejection (metric, log context).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, on_reject: Callable[[Scope], None] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break  # malformed: count while streaming
                if declared > self.max_bytes:
                    await self._refuse(scope, send)
                    return
                # The HTTP server never delivers more than the declared length.
                await self.app(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject(scope)
        # Connection: close, so the server drops the unread rest of the body.
        for message in json_response_messages(
            413, {"error": "payload too large"}, [(b"connection", b"close")]
        ):
            await send(message)


class FastPathMiddleware:
    """Hand requests under ``prefix`` straight to a pure-ASGI ``endpoint``, as the route
    ``<prefix>{param}`` would, skipping the router and Starlette's exception layer (the endpoint
    raises no ``HTTPException``). This is the ingestion hot path; other paths route as usual.
    """

    def __init__(self, app: ASGIApp, prefix: str, endpoint: ASGIApp, param: str) -> None:
        self.app = app
        self.prefix = prefix
        self.endpoint = endpoint
        self.param = param

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix):
                rest = path[len(self.prefix) :]
                if rest and "/" not in rest:
                    scope["path_params"] = {self.param: rest}
                    await self.endpoint(scope, receive, send)
                    return
        await self.app(scope, receive, send)
