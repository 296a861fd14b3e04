"""``/v1/webhooks/{source}``: verify, deduplicate, store durably, answer.

Works on the ASGI scope and ``receive`` (the hot path builds no Request object). Each answer is
one of DESIGN's status codes; each rejection is counted in
``kartahook_webhooks_total{source,outcome}`` and appears in the request's log line with its
``outcome`` and a ``reason`` for operators. Bodies never say why verification failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope

from service import metrics
from service.api.ingest.sources.base import InboundRequest, Rejection, Source, Unroutable
from service.api.middleware import TOO_LARGE_BODY, TOO_LARGE_HEADERS
from service.clock import now_ms
from service.errors import KartahookError
from service.store.events import EventStore, NotReplicated, RedisUnavailable, StoreResult

UNKNOWN_SOURCE = "unknown"
WEBHOOK_PATH_PREFIX = "/v1/webhooks/"


class ClientGone(KartahookError):
    """The client disconnected before its body arrived."""


class Answer(NamedTuple):
    """The answer to one webhook request: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = ()


class WebhookEndpoint:
    """The handler behind ``/v1/webhooks/{source}``; the event store comes from lifespan state.

    :meth:`handle` returns the answer rather than sending it: the caller
    (:class:`service.api.ingest.front.WebhookFront`) sends it with the request id and logs the
    request's line.
    """

    def __init__(self, sources: Mapping[str, Source], retry_after_s: int) -> None:
        self.sources = dict(sources)
        self.unavailable_headers = ((b"retry-after", str(retry_after_s).encode()),)
        self.metrics = metrics.WebhookMetrics()

    def too_large(self, name: str, fields: dict[str, Any]) -> Answer:
        """Count and describe a 413 (the body limit is checked before anything else)."""
        label = name if name in self.sources else UNKNOWN_SOURCE
        self._rejected(fields, label, "too_large", "body over the limit")
        return Answer(413, TOO_LARGE_BODY, TOO_LARGE_HEADERS)

    async def handle(
        self, scope: Scope, receive: Receive, name: str, fields: dict[str, Any]
    ) -> Answer | None:
        """Check, store and answer the webhook of source ``name``; None when the client left
        before its body arrived. Adds the log line's fields to ``fields``."""
        start = time.perf_counter()
        source = self.sources.get(name)
        if source is None:
            self._rejected(fields, UNKNOWN_SOURCE, "unknown_source", f"no source {name[:64]!r}")
            return Answer(404, {"error": "unknown source"})
        if scope["method"] not in source.methods:
            self._rejected(fields, name, "method_not_allowed", f"method {scope['method']}")
            allow = ", ".join(sorted(source.methods)).encode()
            return Answer(405, {"error": "method not allowed"}, ((b"allow", allow),))
        try:
            body = await _read_body(receive)
        except ClientGone:
            self._rejected(fields, name, "client_gone", "client disconnected")
            return None
        request = _inbound_request(scope, body)
        store: EventStore = scope["state"]["event_store"]
        try:
            if source.is_async:
                event = await source.verify_async(request)
            else:
                event = source.verify(request)
        except Unroutable as exc:
            body = source.event_body(request)  # Holo's GET: its query string
            return await self._unroutable(fields, store, exc, request.headers, body, start)
        except Rejection as exc:
            self._rejected(fields, name, exc.outcome, exc.reason)
            # A 503 (the source cannot verify now) tells the provider when to retry.
            headers = self.unavailable_headers if exc.status == 503 else exc.headers
            return Answer(exc.status, {"error": exc.public_message}, headers)
        fields["event_id"] = event.event_id
        fields["payment_id"] = event.payment_id
        try:
            result = await store.store(event, request.headers)
        except RedisUnavailable as exc:
            return self._unavailable(fields, name, exc)
        outcome, status = ("accepted", 202) if result is StoreResult.STORED else ("duplicate", 200)
        fields["source"] = name
        fields["outcome"] = outcome
        self.metrics.count(name, outcome)
        self.metrics.observe_ack(name, time.perf_counter() - start)
        return Answer(status, {"status": outcome, "event_id": event.event_id})

    def _rejected(self, fields: dict[str, Any], source: str, outcome: str, reason: str) -> None:
        fields["source"] = source
        fields["outcome"] = outcome
        fields["reason"] = reason
        self.metrics.count(source, outcome)

    def _unavailable(self, fields: dict[str, Any], source: str, exc: RedisUnavailable) -> Answer:
        outcome = "not_replicated" if isinstance(exc, NotReplicated) else "unavailable"
        self._rejected(fields, source, outcome, str(exc))
        return Answer(503, {"error": "temporarily unavailable"}, self.unavailable_headers)

    async def _unroutable(
        self,
        fields: dict[str, Any],
        store: EventStore,
        exc: Unroutable,
        headers: Mapping[str, str],
        body: bytes,
        start: float,
    ) -> Answer:
        fields["event_id"] = exc.event_id
        try:
            await store.keep_unroutable(exc.source, exc.event_id, exc.received_at_ms, headers, body)
        except RedisUnavailable as unavailable:
            return self._unavailable(fields, exc.source, unavailable)
        self._rejected(fields, exc.source, exc.outcome, exc.reason)
        self.metrics.observe_ack(exc.source, time.perf_counter() - start)
        return Answer(422, {"error": exc.public_message, "event_id": exc.event_id})


async def _read_body(receive: Receive) -> bytes:
    """The whole body (one message, for most webhooks: returned as it is)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _inbound_request(scope: Scope, body: bytes) -> InboundRequest:
    raw_headers = scope["headers"]
    try:
        # Values as their senders mean them: UTF-8 (a Standard Webhooks sender signs a non-ASCII
        # webhook-id as its UTF-8 bytes). ASCII, nearly every request, decodes the same either way.
        headers = {name.decode("latin-1"): value.decode() for name, value in raw_headers}
    except UnicodeDecodeError:
        headers = {name.decode("latin-1"): _header_value(value) for name, value in raw_headers}
    query_string: bytes = scope.get("query_string", b"")
    query = dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {}
    client = scope.get("client")
    # Positional: a NamedTuple built with keywords costs twice as much.
    return InboundRequest(
        scope["method"],  # method
        headers,
        query,
        body,
        client[0] if client else None,  # client_ip
        now_ms(),  # received_at_ms
    )


def _header_value(value: bytes) -> str:
    """A header value, from UTF-8; bytes that are not UTF-8 become U+FFFD. Not as latin-1: the
    bytes ``e9 76 74`` would then read as "évt", and a signature over "évt" would verify two
    different ids."""
    return value.decode(errors="replace")
