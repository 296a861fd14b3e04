"""PayPal (plan code PYP): a webhook event with ``resource.custom_id`` = the KartaPay payment,
signed with the sandbox's certificate key.

Headers: ``PAYPAL-TRANSMISSION-ID``, ``-TIME``, ``-SIG`` (base64 RSA PKCS#1 v1.5 SHA-256 over
``transmissionId|transmissionTime|webhookId|crc32(body)``, the CRC in unsigned decimal),
``PAYPAL-CERT-URL`` (the sandbox's own https URL of the certificate) and
``PAYPAL-AUTH-ALGO: SHA256withRSA``. Each attempt is a new transmission of the same event.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sandbox.payments_store import StatusChange
from sandbox.providers.base import (
    JSON,
    ProviderEvent,
    iso_seconds,
    provider_ref,
    total,
    webhook_path,
)

SOURCE = "paypal"
AUTH_ALGO = "SHA256withRSA"
# KartaPay status -> (event type, resource status).
EVENTS: dict[str, tuple[str, str]] = {
    "submitted": ("PAYMENT.CAPTURE.PENDING", "PENDING"),
    "approved": ("PAYMENT.AUTHORIZATION.CREATED", "CREATED"),
    "captured": ("PAYMENT.CAPTURE.COMPLETED", "COMPLETED"),
    "completed": ("PAYMENT.SALE.COMPLETED", "completed"),
    "failed": ("PAYMENT.CAPTURE.DENIED", "DECLINED"),
    "canceled": ("PAYMENT.AUTHORIZATION.VOIDED", "VOIDED"),
}


def signed_message(
    transmission_id: str, transmission_time: str, webhook_id: str, body: bytes
) -> bytes:
    """What PayPal signs: ``id|time|webhookId|crc32(body)``, the CRC unsigned decimal."""
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()


@dataclass(frozen=True)
class PayPal:
    webhook_id: str
    key: rsa.RSAPrivateKey
    cert_url: str
    source: str = SOURCE
    plan_code: str = "PYP"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        kind, resource_status = EVENTS[change.status]
        value, currency = total(change.payment)
        ref = provider_ref(change).upper()
        event_id = f"WH-{nonce.upper()}"
        body = {
            "id": event_id,
            "event_version": "1.0",
            "create_time": change.at,
            "resource_type": "capture",
            "event_type": kind,
            "summary": f"Payment {resource_status.lower()} for {value} {currency}",
            "resource": {
                "id": ref[:17],
                "custom_id": change.payment_id,
                "invoice_id": change.payment.get("clientId"),
                "status": resource_status,
                "amount": {"currency_code": currency, "value": value},
                "create_time": change.payment.get("submittedAt", change.at),
                "update_time": change.at,
            },
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
        transmission_id = str(uuid.uuid4())
        transmission_time = iso_seconds(now)
        message = signed_message(transmission_id, transmission_time, self.webhook_id, event.body)
        sig = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(sig).decode("ascii"),
            "PAYPAL-CERT-URL": self.cert_url,
            "PAYPAL-AUTH-ALGO": AUTH_ALGO,
        }
