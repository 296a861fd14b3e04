"""A demo subscriber: receives kartahook deliveries, verifies them, and shows what arrived.

Deliveries are POSTed to any path (``/hooks/payments`` in the examples). Each one is checked
against the Standard Webhooks signature made with the subscriber's ``whsec_`` secret:

- missing or malformed headers: 400; a wrong signature or a stale timestamp: 401;
- a body that is not a JSON object: 400;
- a ``webhook-id`` seen before: 200 with ``"duplicate": true``, counted, not listed again;
- otherwise: 200, logged, and listed by ``GET /received``;
- with ``fail_ratio`` R > 0, a share R of the verified deliveries is answered 500 instead (not
  listed, counted as ``rejected`` ``failed_on_purpose``): a failing subscriber for demos of
  retries, dead letters and the circuit breaker (``kartahook run --failing-subscriber``).

``GET /received`` answers, in arrival order, the last ``keep`` deliveries: ``seq``,
``webhook_id``, ``type``, ``payment_id``, ``status``, ``received_at`` (ISO 8601, UTC),
``duplicates`` (extra copies of that ``webhook-id``) and ``path``; with ``keep_raw`` also ``raw``:
the first copy's body and its three ``webhook-*`` headers, so a test can verify the signature
itself. ``?since=SEQ`` lists only those with a larger ``seq`` (for polling); ``?payment_id=ID``
only those of one payment. Beside the entries it counts ``rejected`` deliveries by reason
(``bad_signature``, ``missing_headers``, ``not_json``).
``GET /healthz`` answers 200.

The log line of a delivery carries its ids, type and status; never its signature or the payer.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.domain.signing import MissingHeaderError, SignatureError, decode_secret, verify

log = structlog.get_logger("kartahook.demo_subscriber")

# How many webhook-ids are remembered for deduplication, at least: more than the list keeps, so a
# late duplicate of an entry that has scrolled out of the list is still recognised.
MIN_DEDUPE_WINDOW = 100_000


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


@dataclass(slots=True)
class Received:
    """One delivery, as the demo subscriber saw it first."""

    seq: int
    webhook_id: str
    type: str | None
    payment_id: str | None
    status: str | None
    received_at: str
    path: str
    duplicates: int = 0
    raw: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        listed = {
            "seq": self.seq,
            "webhook_id": self.webhook_id,
            "type": self.type,
            "payment_id": self.payment_id,
            "status": self.status,
            "received_at": self.received_at,
            "duplicates": self.duplicates,
            "path": self.path,
        }
        if self.raw is not None:
            listed["raw"] = self.raw
        return listed


class ReceivedLog:
    """The last ``keep`` deliveries in arrival order, deduplicated on ``webhook-id``."""

    def __init__(self, keep: int = 1000) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.entries: deque[Received] = deque(maxlen=keep)
        self._seen: OrderedDict[str, Received] = OrderedDict()
        self._window = max(keep, MIN_DEDUPE_WINDOW)
        self.count = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str) -> None:
        """Count a delivery refused for ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def add(
        self,
        webhook_id: str,
        body: dict[str, Any],
        path: str,
        raw: dict[str, Any] | None = None,
    ) -> tuple[Received, bool]:
        """Record a delivery; return it and whether it was a duplicate."""
        seen = self._seen.get(webhook_id)
        if seen is not None:
            seen.duplicates += 1
            self.duplicates += 1
            return seen, True
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        event_type = body.get("type")
        # The status the event announces: its type says it. ``data`` is the payment as fetched,
        # which can already be further along (one fetch can reveal several transitions).
        status: Any = None
        if isinstance(event_type, str) and "." in event_type:
            status = event_type.rsplit(".", 1)[1]
        payment_id = data.get("id")
        self.count += 1
        entry = Received(
            seq=self.count,
            webhook_id=webhook_id,
            type=event_type if isinstance(event_type, str) else None,
            payment_id=str(payment_id) if payment_id is not None else None,
            status=status if isinstance(status, str) else None,
            received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            path=path,
            raw=raw,
        )
        self.entries.append(entry)
        self._seen[webhook_id] = entry
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return entry, False

    def listing(self, since: int = 0, payment_id: str | None = None) -> dict[str, Any]:
        received = [
            entry.as_dict()
            for entry in self.entries
            if entry.seq > since and (payment_id is None or entry.payment_id == payment_id)
        ]
        return {
            "count": self.count,
            "duplicates": self.duplicates,
            "kept": len(self.entries),
            "rejected": dict(self.rejected),
            "received": received,
        }


def create_app(
    secret: str, keep: int = 1000, keep_raw: bool = False, fail_ratio: float = 0.0
) -> Starlette:
    """The demo subscriber's ASGI app, verifying with ``secret`` and listing the last ``keep``
    (with each one's body and signature headers when ``keep_raw``); it answers 500 to a share
    ``fail_ratio`` of the deliveries."""
    if not 0.0 <= fail_ratio <= 1.0:
        raise ValueError("fail_ratio must be between 0 and 1")
    keys = [decode_secret(secret)]
    received = ReceivedLog(keep)

    async def deliver(request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        try:
            webhook_id = verify(keys, request.headers, body)
        except MissingHeaderError:
            received.reject("missing_headers")
            log.warning("delivery_rejected", reason="missing_headers", path=request.url.path)
            return _json({"error": "missing or malformed webhook headers"}, 400)
        except SignatureError:
            received.reject("bad_signature")
            log.warning(
                "delivery_rejected",
                reason="bad_signature",
                webhook_id=request.headers.get("webhook-id"),
                path=request.url.path,
            )
            return _json({"error": "invalid signature"}, 401)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            received.reject("not_json")
            log.warning("delivery_rejected", reason="not_json", webhook_id=webhook_id)
            return _json({"error": "the body must be a JSON object"}, 400)
        if fail_ratio and random.random() < fail_ratio:
            received.reject("failed_on_purpose")
            log.info("delivery_failed_on_purpose", webhook_id=webhook_id)
            return _json({"error": "failing on purpose (--fail-ratio)"}, 500)
        raw = None
        if keep_raw:
            names = ("webhook-id", "webhook-timestamp", "webhook-signature")
            headers = {name: request.headers.get(name, "") for name in names}
            raw = {"headers": headers, "body": body.decode()}
        entry, duplicate = received.add(webhook_id, parsed, request.url.path, raw)
        log.info(
            "delivery_received",
            webhook_id=webhook_id,
            type=entry.type,
            payment_id=entry.payment_id,
            status=entry.status,
            duplicate=duplicate,
            seq=entry.seq,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return _json({"received": webhook_id, "duplicate": duplicate})

    async def list_received(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return _json({"error": "since must be an integer"}, 400)
        return _json(received.listing(since, request.query_params.get("payment_id")))

    async def healthz(_: Request) -> Response:
        return _json({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/received", list_received, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{path:path}", deliver, methods=["POST"]),
        ]
    )
    app.state.received = received
    return app
