"""What a delivery sends: the body and the signed headers (Standard Webhooks)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from service.clock import now_ms
from service.domain.events import Transition
from service.domain.subscribers import USER_AGENT, Subscriber, signed_headers

__all__ = ["USER_AGENT", "delivery_body", "delivery_headers"]


def delivery_body(transition: Transition) -> bytes:
    """``{"id", "type", "timestamp", "data": {"id": <payment id>, …payment}}``, the same bytes
    on every attempt and replay."""
    timestamp = transition.occurred_at or datetime.fromtimestamp(
        transition.received_at_ms / 1000, UTC
    ).isoformat().replace("+00:00", "Z")
    return orjson.dumps(
        {
            "id": transition.id,
            "type": transition.event_type,
            "timestamp": timestamp,
            "data": {
                "id": transition.payment_id,
                **{k: v for k, v in transition.payment.items() if k != "id"},
            },
        }
    )


def delivery_headers(
    subscriber: Subscriber, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The subscriber's extra headers, then ours: content type, signatures (one per secret
    during a rotation's overlap), Idempotency-Key (:func:`signed_headers`)."""
    return signed_headers(subscriber, msg_id, body, now_ms(), timestamp)
