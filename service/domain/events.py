"""The events of the pipeline: a stored webhook's hint, and the transitions processing emits.

Pure data: no Redis, no key names (those are :mod:`service.store.layout`), no serialization of
jobs (:mod:`service.store.jobs`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

DIGEST_CHARS = 32


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:DIGEST_CHARS]


def event_digest(source: str, event_id: str) -> str:
    """The digest of (source, event id) that names a stored event's keys and job."""
    return _digest(source, event_id)


@dataclass(frozen=True, slots=True)
class EventHint:
    """A stored, verified webhook: a hint that a payment may have changed. Nothing more."""

    source: str
    event_id: str
    payment_id: str
    received_at_ms: int
    attempt: int = 0
    """How many times processing has been tried before (0 for the job ingestion writes)."""

    def to_job_args(self) -> list[Any]:
        return [asdict(self)]

    @classmethod
    def from_job_arg(cls, arg: dict[str, Any]) -> EventHint:
        return cls(
            source=str(arg["source"]),
            event_id=str(arg["event_id"]),
            payment_id=str(arg["payment_id"]),
            received_at_ms=int(arg["received_at_ms"]),
            attempt=int(arg.get("attempt", 0)),
        )


def transition_id(payment_id: str, status: str) -> str:
    """The ``webhook-id`` of a transition: derived from (payment id, status), so stable forever."""
    return "msg_" + _digest(payment_id, status)


@dataclass(frozen=True, slots=True)
class Transition:
    """One lifecycle step of one payment, as processing emits it (each delivery stores the body
    built from it, ``workers.delivery.message.delivery_body``)."""

    payment_id: str
    status: str
    seq: int
    """Position of ``status`` in the lifecycle order; orders a payment's transitions."""
    occurred_at: str
    """The payment's own timestamp for this status (``capturedAt`` for ``captured``)."""
    source: str
    event_id: str
    received_at_ms: int
    """When the webhook that revealed this transition was received (for end-to-end latency)."""
    payment: dict[str, Any] = field(default_factory=dict)
    """The payment as fetched, with its ``id``."""
    id: str = field(init=False, compare=False)
    """The ``webhook-id``: :func:`transition_id`, computed once (delivery reads it often)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", transition_id(self.payment_id, self.status))

    @property
    def event_type(self) -> str:
        return f"payment.{self.status}"
