"""MVola Madagascar (plan code MVM): a PUT to the callback URL with HTTP Basic.

The body is MVola's merchant-pay callback: ``transactionStatus`` (pending, completed, failed),
``serverCorrelationId`` (one per transaction), ``transactionReference``, ``requestDate``, the
``debitParty``/``creditParty`` lists and a ``metadata`` list of ``{key, value}`` where
``paymentId`` names the KartaPay payment. MVola only knows pending, completed and failed: the
steps between submit and completion all say ``pending`` (kartahook keeps the first of them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from sandbox.payments_store import StatusChange
from sandbox.providers.base import (
    JSON,
    ProviderEvent,
    basic_auth,
    payer_phone,
    provider_ref,
    total,
    webhook_path,
)

SOURCE = "mvola-mg"
MERCHANT_MSISDN = "0343500004"
DEFAULT_PAYER_MSISDN = "0343500003"
_NAMESPACE = uuid.UUID("6f1c7a52-4b0e-4f4e-9c55-0d6a1f8f3b21")
STATUSES: dict[str, str] = {
    "submitted": "pending",
    "approved": "pending",
    "captured": "pending",
    "completed": "completed",
    "failed": "failed",
    "canceled": "failed",
}


@dataclass(frozen=True)
class MVolaMG:
    user: str
    password: str
    source: str = SOURCE
    plan_code: str = "MVM"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        status = STATUSES[change.status]
        ref = provider_ref(change)
        correlation = str(uuid.uuid5(_NAMESPACE, ref))
        value, currency = total(change.payment)
        body = {
            "transactionStatus": status,
            "serverCorrelationId": correlation,
            "transactionReference": ref[:10].upper(),
            "requestDate": change.at,
            "amount": value,
            "currency": "Ar" if currency == "MGA" else currency,
            "debitParty": [
                {"key": "msisdn", "value": payer_phone(change.payment, DEFAULT_PAYER_MSISDN)}
            ],
            "creditParty": [{"key": "msisdn", "value": MERCHANT_MSISDN}],
            "fees": [{"feeAmount": "0"}],
            "metadata": [
                {"key": "paymentId", "value": change.payment_id},
                {"key": "partnerName", "value": "KartaPay"},
            ],
        }
        return ProviderEvent(
            source=self.source,
            event_id=f"{correlation}:{status}",
            type=status,
            status=change.status,
            payment_id=change.payment_id,
            method="PUT",
            path=webhook_path(self.source),
            body=orjson.dumps(body),
            headers=(JSON, basic_auth(self.user, self.password)),
        )

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        return {}  # Basic auth is in the event's headers
