"""The admin API's request and response models (pydantic): each route declares its own
(:mod:`service.api.admin.openapi`), handlers parse requests and shape answers through them, and
``GET /admin/openapi.json`` is built from them, so the document cannot drift from the code."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


def parse_time(value: Any) -> int | None:
    """A time as epoch milliseconds, from an ISO 8601 time with a timezone or epoch ms."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a time is epoch milliseconds or ISO 8601")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit() and len(text) <= 16:
            return int(text)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                raise ValueError("a time needs a timezone (e.g. 2024-05-01T00:00:00Z)")
            return int(moment.timestamp() * 1000)
    raise ValueError("a time is an ISO 8601 time with timezone, or epoch milliseconds")


Time = Annotated[
    int | None,
    BeforeValidator(parse_time),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}],
            "description": "epoch milliseconds, or ISO 8601 with a timezone",
        }
    ),
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Query parameters (unknown ones are ignored)."""

    model_config = ConfigDict(extra="ignore")


# ---- errors ----------------------------------------------------------------------------------


class ErrorBody(Model):
    """Every refusal: a machine-readable code and a sentence for humans."""

    error: str
    detail: str | None = None


# ---- pagination ------------------------------------------------------------------------------


class PageQuery(Query):
    limit: int = Field(50, ge=1, le=500, description="items per page")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


# ---- subscribers (existing routes) ------------------------------------------------------------


class SubscriberOut(Model):
    id: str
    url: str
    events: list[str]
    channels: list[str] | None
    sources: list[str] | None
    enabled: bool
    disabled_reason: str | None
    concurrency: int | None
    headers: dict[str, str]
    origin: Literal["file", "api"]
    updated_at: float
    previous_secret_expires_ms: int | None = Field(
        description="when the secret replaced by the last rotation stops being signed with"
    )


class SubscriberCreated(SubscriberOut):
    secret: str = Field(description="shown once, on creation")


class SubscriberList(Model):
    subscribers: list[SubscriberOut]


class SubscriberPatch(Model):
    """A change to a subscriber: the fields given replace the stored ones."""

    url: str | None = None
    secret: str | None = None
    events: list[str] | None = None
    channels: list[str] | None = None
    sources: list[str] | None = None
    enabled: bool | None = None
    concurrency: int | None = None
    headers: dict[str, str] | None = None


class SubscriberIn(SubscriberPatch):
    """A new subscriber (``secret`` is generated when not given)."""

    id: str
    url: str


class LimitQuery(Query):
    limit: int = Field(100, ge=1, le=10_000)


class AttemptsOut(Model):
    attempts: list[dict[str, Any]] = Field(description="the attempt log, newest first")


class DeadLettersQuery(LimitQuery):
    subscriber: str | None = None
    since: Time = None


class DeadLetterOut(Model):
    subscriber: str
    webhook_id: str
    payment_id: str
    type: str
    seq: int
    attempts: int
    dead_at_ms: int
    last_status: str
    last_error: str
    replays: int
    body: dict[str, Any] | None = None


class DeadLetterList(Model):
    total: int
    dead_letters: list[DeadLetterOut]


class DeliveryRef(Model):
    subscriber: str
    webhook_id: str


class Replayed(Model):
    replayed: list[DeliveryRef]


class ReplayManyIn(Model):
    subscriber: str | None = None
    since: Time = None


class StuckQuery(LimitQuery):
    offset: int = Field(0, ge=0)


class StuckPaymentOut(Model):
    payment_id: str
    status: str
    stuck_ms: int
    first_seen_ms: int | None


class StuckList(Model):
    total: int
    payments: list[StuckPaymentOut]
    next_offset: int | None


class EventDeadLettersQuery(LimitQuery):
    since: Time = None


class EventDeadLetterOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    hint: dict[str, Any]
    reason: str
    last_error: str
    dead_at: float


class EventDeadLetterList(Model):
    total: int
    dead_letters: list[EventDeadLetterOut]


class Retried(Model):
    retried: list[str]


class SinceIn(Model):
    since: Time = None


# ---- history ---------------------------------------------------------------------------------


class DeliveryCounts(Model):
    delivered: int
    failed: int


class Rates(Model):
    events_5m: dict[str, int] = Field(description="events received in the last 5 min, by source")
    deliveries_5m: DeliveryCounts


class SubscriberHealth(Model):
    id: str
    enabled: bool
    breaker: Literal["closed", "open", "half-open"]
    open_until_ms: int | None
    inflight: int
    waiting: int
    dead_letters: int


class Overview(Model):
    backlog: int
    dead_letters: int
    event_dead_letters: int
    stuck: int
    rates: Rates
    subscribers: list[SubscriberHealth]


class EventsQuery(PageQuery):
    source: str | None = None
    event_id: str | None = None
    payment_id: str | None = None
    since: Time = None
    until: Time = None


class EventQuery(Query):
    payment_id: str | None = Field(
        None,
        description="the event's payment (events are kept by payment): needed once the event's "
        "job has run; without it the queued job names the payment",
    )


EventStatus = Literal[
    "queued", "processed", "coalesced", "retry", "dead_lettered", "lease_lost", "unknown"
]


class EventOut(Model):
    source: str
    event_id: str
    payment_id: str | None
    received_ms: int | None
    status: EventStatus


class EventPage(Model):
    items: list[EventOut]
    next_cursor: str | None


class EventDetail(EventOut):
    headers: dict[str, str] | None = Field(description="archived, signatures and credentials out")
    body: str | None = Field(description="the raw body as text while retained, else null")


class PaymentStateOut(Model):
    seq: int
    status: str
    at: str


class Convergence(Model):
    next_check_ms: int | None
    stuck: bool


DeliveryState = Literal["queued", "active", "delivered", "dead", "dropped"]


class DeliverySummary(Model):
    subscriber: str
    webhook_id: str
    payment_id: str
    type: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    created_ms: int | None
    last_ms: int | None
    delivered_ms: int | None


class TimelineEntry(Model):
    """One moment of a payment's history; the fields besides ``at_ms`` and ``kind`` depend on
    the kind (hint: source, event_id; fetch: status, outcome; transition: status, webhook_id,
    type; delivery: subscriber, webhook_id, state; attempt: subscriber, webhook_id,
    status_code, error)."""

    at_ms: int
    kind: Literal["hint", "fetch", "transition", "delivery", "attempt"]
    source: str | None = None
    event_id: str | None = None
    status: str | None = None
    outcome: str | None = None
    webhook_id: str | None = None
    type: str | None = None
    subscriber: str | None = None
    state: str | None = None
    status_code: int | None = None
    error: str | None = None


class PaymentDetail(Model):
    payment_id: str
    state: PaymentStateOut | None
    terminal: bool
    convergence: Convergence
    timeline: list[TimelineEntry]
    deliveries: list[DeliverySummary]


class DeliveriesQuery(PageQuery):
    subscriber: str | None = None
    payment_id: str | None = None
    state: DeliveryState | None = None


class DeliveryPage(Model):
    items: list[DeliverySummary]
    next_cursor: str | None


class AttemptOut(Model):
    at_ms: int
    status: int | None
    error: str | None
    duration_ms: float | None


class DeliveryDetail(DeliverySummary):
    attempts_log: list[AttemptOut]


class ResendOut(Model):
    job_id: str | None = Field(description="the attempt's job when it starts now; null: in line")
    webhook_id: str


class BulkResendIn(Model):
    since: Time = Field(description="deliveries created at or after this time")


class Queued(Model):
    queued: int


class RotateIn(Model):
    overlap_s: int = Field(86_400, ge=0, le=30 * 86_400, description="0: no overlap")
    secret: str | None = Field(None, description="the new whsec_ secret (default: generated)")


class Rotated(Model):
    secret: str = Field(description="the new secret: the only time it is shown")
    previous_expires_ms: int


class SubscriberTestResult(Model):
    delivered: bool
    status: int | None
    error: str | None
    duration_ms: int


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
