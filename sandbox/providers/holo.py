"""Holo (plan code HOL): a GET with everything in the query string, and HTTP Basic.

Parameters: ``transactionId`` (one per notification, the event id kartahook is configured
with), ``reference`` (the KartaPay payment), ``status`` and ``amount``, plus ``currency`` and
``date``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.payments_store import StatusChange
from sandbox.providers.base import ProviderEvent, basic_auth, total, webhook_path

SOURCE = "holo"
STATUSES: dict[str, str] = {
    "submitted": "PENDING",
    "approved": "AUTHORIZED",
    "captured": "CAPTURED",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "canceled": "CANCELLED",
}


@dataclass(frozen=True)
class Holo:
    user: str
    password: str
    source: str = SOURCE
    plan_code: str = "HOL"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        status = STATUSES[change.status]
        value, currency = total(change.payment)
        transaction_id = f"HOL{nonce.upper()}"
        query = (
            ("transactionId", transaction_id),
            ("reference", change.payment_id),
            ("status", status),
            ("amount", value),
            ("currency", currency),
            ("date", change.at),
        )
        return ProviderEvent(
            source=self.source,
            event_id=transaction_id,
            type=status,
            status=change.status,
            payment_id=change.payment_id,
            method="GET",
            path=webhook_path(self.source),
            query=query,
            headers=(basic_auth(self.user, self.password),),
        )

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        return {}  # Basic auth is in the event's headers
