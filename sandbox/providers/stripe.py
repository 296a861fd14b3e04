"""Stripe (plan code STR): a PaymentIntent event, ``Stripe-Signature: t=…,v1=…``.

The signature is the hex HMAC-SHA256 of ``"<t>.<body>"`` keyed with the endpoint secret exactly
as written (the ``whsec_…`` string, not decoded). Event ids are ``evt_…``, one per status; the
PaymentIntent (``pi_…``) is the same for all of a payment's events, and its metadata names the
KartaPay payment (``data.object.metadata.paymentId``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import orjson

from sandbox.payments_store import StatusChange
from sandbox.providers.base import (
    JSON,
    ProviderEvent,
    epoch_seconds,
    minor_units,
    provider_ref,
    total,
    webhook_path,
)

SOURCE = "stripe"
# KartaPay status -> (event type, PaymentIntent status). Stripe has no event after the capture
# succeeded, so ``completed`` is told by a second payment_intent.succeeded (its own event id).
EVENTS: dict[str, tuple[str, str]] = {
    "submitted": ("payment_intent.processing", "processing"),
    "approved": ("payment_intent.amount_capturable_updated", "requires_capture"),
    "captured": ("payment_intent.succeeded", "succeeded"),
    "completed": ("payment_intent.succeeded", "succeeded"),
    "failed": ("payment_intent.payment_failed", "requires_payment_method"),
    "canceled": ("payment_intent.canceled", "canceled"),
}


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"t.body"`` keyed with the secret as written."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Stripe:
    secret: str
    source: str = SOURCE
    plan_code: str = "STR"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        kind, intent_status = EVENTS[change.status]
        value, currency = total(change.payment)
        amount = minor_units(value, currency)
        intent = {
            "id": f"pi_{provider_ref(change)}",
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount if intent_status == "succeeded" else 0,
            "currency": currency.lower(),
            "capture_method": "manual",
            "status": intent_status,
            "livemode": False,
            "metadata": {"paymentId": change.payment_id},
        }
        event_id = f"evt_{nonce}"
        body = {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "type": kind,
            "created": epoch_seconds(change.at),
            "livemode": False,
            "pending_webhooks": 1,
            "data": {"object": intent},
        }
        return ProviderEvent(
            source=self.source,
            event_id=event_id,
            type=kind,
            status=change.status,
            payment_id=change.payment_id,
            method="POST",
            path=webhook_path(self.source),
            body=orjson.dumps(body),
            headers=(JSON,),
        )

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        t = int(now)
        return {"Stripe-Signature": f"t={t},v1={signature(self.secret, t, event.body)}"}
