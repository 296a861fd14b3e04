"""The sandbox's payments, kept in memory, and the rules of their status lifecycle.

Every change of status sets the matching timestamp field and is reported to ``on_change`` with
a frozen copy of the payment, so webhooks carry the payment as it was at that moment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain.lifecycle import TIMESTAMP_FIELD

# Lifecycle: init -> (pending) -> submitted -> approved -> captured -> completed;
# canceled before approval, failed from any state that is not final.
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    "init": frozenset({"submitted", "canceled", "failed"}),
    "pending": frozenset({"submitted", "canceled", "failed"}),
    "submitted": frozenset({"approved", "canceled", "failed"}),
    "approved": frozenset({"captured", "failed"}),
    "captured": frozenset({"completed", "failed"}),
    "completed": frozenset(),
    "canceled": frozenset(),
    "failed": frozenset(),
}
FINAL_STATUSES = frozenset({"completed", "canceled", "failed"})

GATEWAYS = [
    {"code": "HOL", "name": "Holo", "image": "https://sandbox.kartapay.test/gateways/hol.svg"},
    {
        "code": "HRM",
        "name": "Huri Money",
        "image": "https://sandbox.kartapay.test/gateways/hrm.svg",
    },
    {
        "code": "MVK",
        "name": "MVola Comores",
        "image": "https://sandbox.kartapay.test/gateways/mvk.svg",
    },
    {
        "code": "MVM",
        "name": "MVola Madagascar",
        "image": "https://sandbox.kartapay.test/gateways/mvm.svg",
    },
    {"code": "PYP", "name": "PayPal", "image": "https://sandbox.kartapay.test/gateways/pyp.svg"},
    {"code": "STR", "name": "Stripe", "image": "https://sandbox.kartapay.test/gateways/str.svg"},
]
PAYEE = {"fullName": "KartaPay Sandbox Merchant"}
CLAIM_FIELDS = (
    "context",
    "payer",
    "purchase",
    "clientId",
    "clientNote",
    "cancelUrl",
    "successUrl",
)


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TransitionError(Exception):
    """The payment cannot move to that status from where it is."""


@dataclass(frozen=True)
class StatusChange:
    """A payment reached ``status`` at ``at``; ``payment`` is a copy including ``id``."""

    payment_id: str
    status: str
    at: str
    payment: dict[str, Any]


@dataclass
class PaymentRecord:
    """One payment: its API body (without id) and the sandbox's private plans for it."""

    id: str
    body: dict[str, Any]
    will_fail: bool = False
    seq: int = 0
    # The final status its automatic steps lead to, when planned (``POST
    # /_sandbox/payments/{id}/outcome``); None: ``completed``, or ``failed`` by ``fail_ratio``.
    outcome: str | None = None

    @property
    def status(self) -> str:
        return str(self.body["status"])

    def view(self) -> dict[str, Any]:
        """The payment as the API shows it: the body plus ``id`` (not copied)."""
        return {"id": self.id, **self.body}


class PaymentStore:
    """Payments by id, in creation order."""

    def __init__(
        self,
        new_id: Callable[[], str],
        on_change: Callable[[StatusChange], None],
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        self._new_id = new_id
        self._on_change = on_change
        self._clock = clock
        self._payments: dict[str, PaymentRecord] = {}

    def __len__(self) -> int:
        return len(self._payments)

    def create(self, claim: dict[str, Any], submit_url: Callable[[str], str]) -> PaymentRecord:
        """A new payment in ``init`` from a validated claim."""
        payment_id = self._new_id()
        now = self._clock()
        body: dict[str, Any] = {"status": "init", "captured": False}
        for name in CLAIM_FIELDS:
            if name in claim:
                body[name] = copy.deepcopy(claim[name])
        context = body.setdefault("context", {})
        context.setdefault("redirectMode", "embedded")
        body["payee"] = dict(PAYEE)
        plan: dict[str, Any] = {"options": copy.deepcopy(GATEWAYS)}
        source = claim.get("plan", {}).get("source")
        if source is not None:
            plan["source"] = source
        body["plan"] = plan
        body["billing"] = {"submitUrl": submit_url(payment_id), "traces": []}
        body["createdAt"] = now
        record = PaymentRecord(id=payment_id, body=body, seq=len(self._payments))
        self._payments[payment_id] = record
        self._report(record, "init", now)
        return record

    def get(self, payment_id: str) -> PaymentRecord | None:
        return self._payments.get(payment_id)

    def all(self) -> list[PaymentRecord]:
        """Every payment, oldest first."""
        return list(self._payments.values())

    def move(self, payment_id: str, status: str, **updates: Any) -> PaymentRecord:
        """Move a payment to ``status``, setting its timestamp; KeyError or TransitionError."""
        record = self._payments[payment_id]
        if status not in ALLOWED_MOVES[record.status]:
            raise TransitionError(f"a payment in status {record.status} cannot become {status}")
        now = self._clock()
        body = record.body
        body["status"] = status
        body[TIMESTAMP_FIELD[status]] = now
        if status == "captured":
            body["captured"] = True
        body.update(updates)
        if status != "canceled":
            body["billing"]["traces"].append({"status": status, "at": now})
        self._report(record, status, now)
        return record

    def _report(self, record: PaymentRecord, status: str, at: str) -> None:
        self._on_change(StatusChange(record.id, status, at, copy.deepcopy(record.view())))
