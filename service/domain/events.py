"""The job contract between ingestion, processing and fan-out.

Every job is stored in arq's own format, serialized as JSON (never pickle), so a stock arq
``Worker`` runs what ingestion and processing write directly with Lua. Function names, argument
shapes and Redis key names live here, and both sides import them from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

# arq's job key prefix (arq.constants); repeated here so Lua scripts can write arq jobs directly.
ARQ_JOB_PREFIX = "arq:job:"
# How long a job key lives beyond its run time (arq's ``expires_extra_ms``; arq's default is one
# day). A job whose key expires before a worker reaches it is lost ("job expired"), so this is
# how long a backlog may last without losing a stored webhook or a delivery: seven days, longer
# than the providers' retry windows. Every writer of jobs uses it, arq's pools and workers too.
ARQ_EXPIRES_EXTRA_MS = 7 * 86_400_000

PROCESS_EVENT = "process_event"

KEY_PREFIX = "kh:"


def serialize(obj: Any) -> bytes:
    """arq ``job_serializer``: JSON via orjson."""
    return orjson.dumps(obj)


def deserialize(data: bytes) -> Any:
    """arq ``job_deserializer``: JSON via orjson."""
    return orjson.loads(data)


def arq_job_bytes(
    function: str, args: list[Any], enqueue_time_ms: int, job_try: int | None = None
) -> bytes:
    """A job body exactly as ``arq.jobs.serialize_job`` writes it, with the JSON serializer."""
    return serialize({"t": job_try, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})


DIGEST_CHARS = 32
# Key names and the job id of a stored event: each prefix is followed by event_digest().
EVENT_JOB_PREFIX = "evt:"
DEDUPE_PREFIX = f"{KEY_PREFIX}dedupe:"
RAW_EVENT_PREFIX = f"{KEY_PREFIX}raw:"


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

    @property
    def job_id(self) -> str:
        return event_job_id(self.source, self.event_id)

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


def event_job_id(source: str, event_id: str) -> str:
    """The arq job id of a stored event, the same for every copy of the event."""
    return EVENT_JOB_PREFIX + event_digest(source, event_id)


def dedupe_key(source: str, event_id: str) -> str:
    return DEDUPE_PREFIX + event_digest(source, event_id)


def raw_event_key(source: str, event_id: str) -> str:
    return RAW_EVENT_PREFIX + event_digest(source, event_id)


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
