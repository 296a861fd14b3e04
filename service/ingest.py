"""``/v1/webhooks/{source}``: verify, deduplicate, store durably, answer.

A pure-ASGI endpoint (the hot path builds no Request object). Each answer is one of DESIGN's
status codes; each rejection is counted in ``kartahook_webhooks_total{source,outcome}`` and
appears in the request's log line (:func:`service.middleware.request_log_fields`) with its
``outcome`` and a ``reason`` for operators. Bodies never say why verification failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from service import metrics
from service.enqueue import EventStore, RedisUnavailable, StoreResult
from service.middleware import json_response_messages, request_log_fields
from service.sources.base import InboundRequest, Rejection, Source, Unroutable

UNKNOWN_SOURCE = "unknown"
WEBHOOK_PATH_PREFIX = "/v1/webhooks/"


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class Outcomes:
    """Cached metric children per (source, outcome): ``labels()`` is too slow for the hot path."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def count(self, source: str, outcome: str) -> None:
        counter = self._counters.get((source, outcome))
        if counter is None:
            counter = metrics.WEBHOOKS.labels(source, outcome)
            self._counters[(source, outcome)] = counter
        counter.inc()

    def observe_ack(self, source: str, seconds: float) -> None:
        histogram = self._latency.get(source)
        if histogram is None:
            histogram = metrics.ACK_SECONDS.labels(source)
            self._latency[source] = histogram
        histogram.observe(seconds)


class WebhookEndpoint:
    """The ASGI app behind ``/v1/webhooks/{source}``; the event store comes from lifespan state."""

    def __init__(self, sources: Mapping[str, Source], retry_after_s: int) -> None:
        self.sources = dict(sources)
        self.retry_after = str(retry_after_s).encode()
        self.outcomes = Outcomes()

    def source_label(self, path: str) -> str:
        """The metric label for a webhook path: the source name if configured, else unknown."""
        name = path.removeprefix(WEBHOOK_PATH_PREFIX)
        return name if name in self.sources else UNKNOWN_SOURCE

    def record_too_large(self, scope: Scope) -> None:
        """Body-limit hook: count and describe a 413 on a webhook path."""
        path: str = scope["path"]
        if path.startswith(WEBHOOK_PATH_PREFIX):
            label = self.source_label(path)
            request_log_fields(scope).update(
                source=label, outcome="too_large", reason="body over the limit"
            )
            self.outcomes.count(label, "too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        fields = request_log_fields(scope)
        name: str = scope["path_params"]["source"]
        source = self.sources.get(name)
        if source is None:
            fields.update(
                source=UNKNOWN_SOURCE, outcome="unknown_source", reason=f"no source {name[:64]!r}"
            )
            self.outcomes.count(UNKNOWN_SOURCE, "unknown_source")
            await _answer(send, 404, {"error": "unknown source"})
            return
        if scope["method"] not in source.methods:
            self._rejected(fields, name, "method_not_allowed", f"method {scope['method']}")
            allow = ", ".join(sorted(source.methods)).encode()
            await _answer(send, 405, {"error": "method not allowed"}, [(b"allow", allow)])
            return
        try:
            body = await _read_body(receive)
        except ClientGone:
            self._rejected(fields, name, "client_gone", "client disconnected")
            return
        request = _inbound_request(scope, body)
        store: EventStore = scope["state"]["event_store"]
        try:
            event = source.verify(request)
        except Unroutable as exc:
            await self._unroutable(send, fields, store, exc, request, start)
            return
        except Rejection as exc:
            self._rejected(fields, name, exc.outcome, exc.reason)
            await _answer(send, exc.status, {"error": exc.public_message})
            return
        fields["event_id"] = event.event_id
        fields["payment_id"] = event.payment_id
        try:
            result = await store.store(event, request.headers)
        except RedisUnavailable as exc:
            await self._unavailable(send, fields, name, str(exc))
            return
        if result is StoreResult.STORED:
            outcome, status = "accepted", 202
        else:
            outcome, status = "duplicate", 200
        fields["source"] = name
        fields["outcome"] = outcome
        self.outcomes.count(name, outcome)
        await _answer(send, status, {"status": outcome, "event_id": event.event_id})
        self.outcomes.observe_ack(name, time.perf_counter() - start)

    def _rejected(self, fields: dict[str, Any], source: str, outcome: str, reason: str) -> None:
        fields["source"] = source
        fields["outcome"] = outcome
        fields["reason"] = reason
        self.outcomes.count(source, outcome)

    async def _unavailable(
        self, send: Send, fields: dict[str, Any], source: str, reason: str
    ) -> None:
        self._rejected(fields, source, "unavailable", reason)
        await _answer(
            send, 503, {"error": "temporarily unavailable"}, [(b"retry-after", self.retry_after)]
        )

    async def _unroutable(
        self,
        send: Send,
        fields: dict[str, Any],
        store: EventStore,
        exc: Unroutable,
        request: InboundRequest,
        start: float,
    ) -> None:
        fields["event_id"] = exc.event_id
        try:
            await store.keep_unroutable(
                exc.source, exc.event_id, exc.received_at_ms, request.headers, request.body
            )
        except RedisUnavailable as unavailable:
            await self._unavailable(send, fields, exc.source, str(unavailable))
            return
        self._rejected(fields, exc.source, exc.outcome, exc.reason)
        await _answer(send, 422, {"error": exc.public_message, "event_id": exc.event_id})
        self.outcomes.observe_ack(exc.source, time.perf_counter() - start)


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start, payload = json_response_messages(status, body, headers or ())
    await send(start)
    await send(payload)


async def _read_body(receive: Receive) -> bytes:
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
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query_string: bytes = scope.get("query_string", b"")
    query = dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {}
    client = scope.get("client")
    return InboundRequest(
        method=scope["method"],
        headers=headers,
        query=query,
        body=body,
        client_ip=client[0] if client else None,
        received_at_ms=time.time_ns() // 1_000_000,
    )
