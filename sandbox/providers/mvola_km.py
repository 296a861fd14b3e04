"""MVola Comores (plan code MVK): a POST with HTTP Basic and a flat JSON body:
``operationID``, ``msisdn``, ``amount``, ``status``, ``transID`` (MVola's transaction) and
``transIDP`` (the partner's id: the KartaPay payment). Statuses: PENDING, SUCCESS, FAILED; the
steps between submit and completion all say PENDING.
"""

from __future__ import annotations

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

SOURCE = "mvola-km"
OPERATION_ID = "MERCHANT_PAYMENT"
DEFAULT_PAYER_MSISDN = "2693321000"
STATUSES: dict[str, str] = {
    "submitted": "PENDING",
    "approved": "PENDING",
    "captured": "PENDING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "canceled": "FAILED",
}


@dataclass(frozen=True)
class MVolaKM:
    user: str
    password: str
    source: str = SOURCE
    plan_code: str = "MVK"

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        status = STATUSES[change.status]
        trans_id = f"MP{provider_ref(change)[:12].upper()}"
        value, _ = total(change.payment)
        body = {
            "operationID": OPERATION_ID,
            "msisdn": payer_phone(change.payment, DEFAULT_PAYER_MSISDN),
            "amount": value,
            "status": status,
            "transID": trans_id,
            "transIDP": change.payment_id,
            "date": change.at,
        }
        return ProviderEvent(
            source=self.source,
            event_id=f"{trans_id}:{status}",
            type=status,
            status=change.status,
            payment_id=change.payment_id,
            method="POST",
            path=webhook_path(self.source),
            body=orjson.dumps(body),
            headers=(JSON, basic_auth(self.user, self.password)),
        )

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        return {}  # Basic auth is in the event's headers
