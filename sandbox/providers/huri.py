"""Huri Money (plan code HRM): a POST of ``{id, type, created, data: {paymentId, status, amount,
currency}}`` signed with a generic HMAC of the body, in the header, algorithm, encoding and
prefix the settings name (default ``X-Huri-Signature``, SHA-256, hex, no prefix). With a
timestamp header set, ``"<timestamp>.<body>"`` is signed and the timestamp sent in that header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

from sandbox.payments_store import StatusChange
from sandbox.providers.base import JSON, ProviderEvent, total, webhook_path

SOURCE = "huri"
STATUSES: dict[str, str] = {
    "submitted": "pending",
    "approved": "authorized",
    "captured": "captured",
    "completed": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
}


def signature(secret: str, message: bytes, algorithm: str, encoding: str) -> str:
    digest = hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class Huri:
    secret: str
    header: str = "X-Huri-Signature"
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    source: str = SOURCE
    plan_code: str = "HRM"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        status = STATUSES[change.status]
        value, currency = total(change.payment)
        event_id = f"hur_{nonce}"
        body = {
            "id": event_id,
            "type": f"payment.{status}",
            "created": change.at,
            "data": {
                "paymentId": change.payment_id,
                "status": status,
                "amount": value,
                "currency": currency,
            },
        }
        return ProviderEvent(
            source=self.source,
            event_id=event_id,
            type=f"payment.{status}",
            status=change.status,
            payment_id=change.payment_id,
            method="POST",
            path=webhook_path(self.source),
            body=orjson.dumps(body),
            headers=(JSON,),
        )

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        message = event.body
        if self.timestamp_header:
            timestamp = str(int(now))
            headers[self.timestamp_header] = timestamp
            message = timestamp.encode() + b"." + event.body
        sig = signature(self.secret, message, self.algorithm, self.encoding)
        headers[self.header] = self.prefix + sig
        return headers
