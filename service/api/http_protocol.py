"""uvicorn's httptools protocol with the limits DESIGN asks of the front door.

``kartahook serve`` runs uvicorn with ``http=HTTP_PROTOCOL`` (this class). On top of uvicorn's
:class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` it adds, per connection:

- **Only the header block counts as headers.** httptools reports chunked trailer fields through
  the same ``on_header`` callback as headers, and uvicorn appended them to ``scope["headers"]``
  (a signature or ``webhook-id`` sent only in a trailer was honoured). Trailers are dropped
  here; their size counts against the header limit, and a connection sending more closes.
- **A header-block limit** (``KARTAHOOK_MAX_HEADER_BYTES``, default 16 KiB: request target plus
  every field line). A larger block is answered 431 with a JSON body at once, before the rest
  arrives, logged as a request line and counted as ``outcome=headers_too_large``.
- **A header-read timeout** (``KARTAHOOK_HEADER_TIMEOUT_S``): from the moment a connection opens,
  or a request's first byte arrives, to the end of its header block. A connection that sent part
  of a request is answered 408 and closed; one that sent nothing is closed.
- **A connection cap** (``KARTAHOOK_MAX_CONNECTIONS``): a connection over it is closed at once,
  without an answer (uvicorn's ``limit_concurrency`` would answer 503, which DESIGN reserves for
  Redis), and counted.

The limits come from :class:`~service.settings.Settings` (the environment), read once per uvicorn
``Config``. The h11 protocol is not used by ``kartahook serve`` (it ignores trailers itself).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from prometheus_client import Counter
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service import metrics
from service.api.ingest.endpoint import UNKNOWN_SOURCE, WEBHOOK_PATH_PREFIX
from service.api.middleware import REQUEST_ID_HEADER, RequestLog, new_request_id
from service.errors import KartahookError
from service.settings import Settings

HTTP_PROTOCOL = "service.api.http_protocol:KartahookHttpProtocol"
HEADERS_TOO_LARGE = "headers_too_large"

CONNECTIONS_CLOSED = Counter(
    "kartahook_http_connections_closed",
    "Connections the HTTP server closed itself: over_cap, header_timeout, trailers_too_large.",
    ["reason"],
    registry=metrics.REGISTRY,
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The per-connection limits of the HTTP server."""

    max_header_bytes: int
    header_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(settings.max_header_bytes, settings.header_timeout_s, settings.max_connections)


_LIMITS_ATTRIBUTE = "_kartahook_http_limits"
_request_log = RequestLog()


def limits_of(config: Config) -> HttpLimits:
    """The limits of the server of ``config``: from the environment, read on first use."""
    limits = getattr(config, _LIMITS_ATTRIBUTE, None)
    if not isinstance(limits, HttpLimits):
        limits = HttpLimits.from_settings(Settings())
        setattr(config, _LIMITS_ATTRIBUTE, limits)
    return limits


class HeadersTooLarge(KartahookError):
    """Raised from a parser callback: stops parsing the request at once."""


class KartahookHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a header-block limit, a header-read timeout, a connection
    cap, and chunked trailers ignored (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits_of(config)
        self.head_bytes = 0  # request target + field lines of the current header block
        self.raw_head_bytes = 0  # bytes received while in the header block (a coarse guard)
        self.in_head = True
        self.head_started = False  # the current header block's first byte arrived
        self.in_trailers = False
        self.between_messages = True  # no request begun since the last one ended
        self.message_begins = 0
        self.refused = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.running_cycle: RequestResponseCycle | None = None

    # Connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            CONNECTIONS_CLOSED.labels("over_cap").inc()
            self.refused = True
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._abandon_cycles()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn writes this 400 and closes at once. A request still being answered (pipelined
        # before the bad one) would then write on the closed transport, and uvloop's error would
        # be logged as "Exception in ASGI application": it is told the client is gone instead.
        self._abandon_cycles()
        super().send_400_response(msg)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self.running_cycle = cycle  # uvicorn's self.cycle is the last request parsed
        super()._start_asgi_task(cycle, app)

    def _abandon_cycles(self) -> None:
        """Tell the request being answered, and the last one parsed, that the client is gone."""
        for cycle in (self.running_cycle, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        begins = self.message_begins
        idle = self.between_messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.refused:  # a callback refused the request
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self.in_head and (
            begins == self.message_begins or (idle and begins + 1 == self.message_begins)
        ):
            # The whole chunk belongs to an unfinished header block: httptools keeps a field
            # line it has not finished in memory, so a long one is refused before it ends. (A
            # chunk that also ended an earlier request is not counted: its share is unknown.)
            self.raw_head_bytes += len(data)
            if self.raw_head_bytes > self.limits.max_header_bytes:
                self._refuse_headers()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.message_begins += 1
        self.between_messages = False
        self.head_bytes = self.raw_head_bytes = 0
        self.in_head = self.head_started = True
        self.in_trailers = False
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.limits.max_header_bytes:
            self._refuse_headers()
            raise HeadersTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self.head_bytes > self.limits.max_header_bytes:
            if self.in_trailers:
                # The request is being answered already: no 431 fits; drop the connection.
                CONNECTIONS_CLOSED.labels("trailers_too_large").inc()
                self.refused = True
                self._abandon_cycles()
                self.transport.close()
            else:
                self._refuse_headers()
            raise HeadersTooLarge
        if self.in_trailers:
            return  # a chunked trailer field: not a header (DESIGN)
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self.between_messages = True
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self.in_head = self.head_started = False
        self.in_trailers = True
        super().on_headers_complete()

    # Limits
    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or not self.in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's header block, behind a request still being answered.
            self._arm_header_timer()
            return
        CONNECTIONS_CLOSED.labels("header_timeout").inc()
        self.refused = True
        if self.head_started or self.raw_head_bytes:  # part of a request arrived
            self._write_answer(408, {"error": "request header timeout"}, new_request_id())
        self.transport.close()

    def _refuse_headers(self) -> None:
        """Answer 431 (when no earlier response is still being sent) and close."""
        if self.refused:
            return
        self.refused = True
        self._disarm_header_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind one being answered: close once that answer is sent.
            self.cycle.keep_alive = False
            return
        start = time.perf_counter()
        request_id = new_request_id()
        path = _path_of(self.url)
        name = path[len(WEBHOOK_PATH_PREFIX) :] if path.startswith(WEBHOOK_PATH_PREFIX) else ""
        sources = self.app_state.get("webhook_sources", ())
        source = name if name in sources else UNKNOWN_SOURCE
        metrics.WEBHOOKS.labels(source, HEADERS_TOO_LARGE).inc()
        self._write_answer(431, {"error": "request header fields too large"}, request_id)
        self.transport.close()
        try:
            method = self.parser.get_method().decode("ascii")
        except (httptools.HttpParserError, UnicodeDecodeError):
            method = "-"
        scope = {"path": path, "method": method, "client": self.client}
        fields = {
            "request_id": request_id,
            "source": source,
            "outcome": HEADERS_TOO_LARGE,
            "reason": f"header block over {self.limits.max_header_bytes} bytes",
        }
        _request_log.write(scope, fields, 431, start)

    def _write_answer(self, status: int, body: dict[str, str], request_id: str) -> None:
        payload = orjson.dumps(body)
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: application/json\r\ncontent-length: ",
                    str(len(payload)).encode(),
                    b"\r\nconnection: close\r\n",
                    REQUEST_ID_HEADER,
                    b": ",
                    request_id.encode(),
                    b"\r\n\r\n",
                    payload,
                )
            )
        )


def _path_of(url: bytes) -> str:
    """The decoded path of a request target ("" when it is not one)."""
    try:
        path = httptools.parse_url(url).path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError, AttributeError):
        return ""
    return urllib.parse.unquote(path) if "%" in path else path
