"""What every inbound source shares: the request it sees, the event it yields, and its rejections.

A source turns one HTTP request into a :class:`VerifiedEvent` or raises a :class:`Rejection`.
:meth:`Source.verify` is the template: content type, authenticity (the part each source writes),
JSON, then the event id and payment id found by configurable :class:`Locator` s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from service.errors import KartahookError


class InboundRequest(NamedTuple):
    """One webhook request as the sources see it. Header names are lower case.

    Immutable; a NamedTuple rather than a frozen dataclass because it is built for every request
    and a frozen dataclass's ``__init__`` costs twice as much.
    """

    method: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    client_ip: str | None
    received_at_ms: int


class VerifiedEvent(NamedTuple):
    """An authentic webhook that names a payment: what ingestion stores and enqueues."""

    source: str
    event_id: str
    payment_id: str
    received_at_ms: int
    body: bytes


class Rejection(KartahookError):
    """A request refused by a source. ``reason`` is for logs only, never for response bodies."""

    status: ClassVar[int] = 400
    outcome: ClassVar[str] = "rejected"
    public_message: ClassVar[str] = "rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedRequest(Rejection):
    """The body is not JSON, or a required header is missing or malformed (400)."""

    status = 400
    outcome = "malformed"
    public_message = "malformed request"


class NotAuthentic(Rejection):
    """Wrong signature or credentials, or a timestamp outside the tolerance (401)."""

    status = 401
    outcome = "unauthenticated"
    public_message = "unauthenticated"


class WrongContentType(Rejection):
    """The content type is not one the source accepts (415)."""

    status = 415
    outcome = "unsupported_media_type"
    public_message = "unsupported media type"


class Unroutable(Rejection):
    """Authentic, but no payment id can be found (422). The raw event is kept for inspection."""

    status = 422
    outcome = "unroutable"
    public_message = "no payment id"

    def __init__(self, reason: str, *, source: str, event_id: str, received_at_ms: int) -> None:
        super().__init__(reason)
        self.source = source
        self.event_id = event_id
        self.received_at_ms = received_at_ms


_MISSING = object()
MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Locator:
    """Where to find a value: ``"header:<name>"``, ``"query:<name>"``, or a dotted JSON path."""

    kind: str
    path: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> Locator:
        spec = spec.strip()
        for kind in ("header", "query"):
            prefix = kind + ":"
            if spec.startswith(prefix):
                name = spec[len(prefix) :].strip()
                if not name:
                    raise ValueError(f"empty {kind} name in locator {spec!r}")
                return cls(kind, (name.lower() if kind == "header" else name,))
        parts = tuple(spec.split("."))
        if not spec or any(not part for part in parts):
            raise ValueError(f"invalid JSON path {spec!r}")
        return cls("json", parts)

    def find(self, request: InboundRequest, document: Any) -> str | None:
        """The value as a non-empty string, or None when it is absent, empty or not a scalar."""
        value: Any
        if self.kind == "header":
            value = request.headers.get(self.path[0])
        elif self.kind == "query":
            value = request.query.get(self.path[0])
        else:
            value = document
            for part in self.path:
                if isinstance(value, dict):
                    value = value.get(part, _MISSING)
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = _MISSING
                if value is _MISSING:
                    return None
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, (str, int)):
            text = str(value).strip()
            return text or None
        return None


class SourceOptions(BaseModel):
    """Options every source accepts in the sources file. Sources extend this model."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(None, description="Source type, when it differs from its name.")
    event_id: str | None = Field(None, description="Locator of the event id.")
    payment_id: str | None = Field(None, description="Locator of the KartaPay payment id.")
    content_types: list[str] | None = Field(None, description="Accepted content types.")


class Source(ABC):
    """One inbound source: one path, one way to verify, configurable id extraction."""

    options_model: ClassVar[type[SourceOptions]] = SourceOptions
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})
    default_event_id: ClassVar[str | None] = None
    default_payment_id: ClassVar[str | None] = None
    default_content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    body_is_json: ClassVar[bool] = True

    def __init__(self, name: str, options: SourceOptions) -> None:
        self.name = name
        self.options = options
        event_spec = options.event_id or self.default_event_id
        payment_spec = options.payment_id or self.default_payment_id
        if event_spec is None:
            raise ValueError(f"source {name!r}: event_id must be configured")
        if payment_spec is None:
            raise ValueError(f"source {name!r}: payment_id must be configured")
        self.event_locator = Locator.parse(event_spec)
        self.payment_locator = Locator.parse(payment_spec)
        self.content_types = frozenset(
            ct.lower() for ct in (options.content_types or self.default_content_types)
        )
        # Content-Type header values seen and accepted (a handful per sender): one set lookup.
        self._accepted_raw_content_types: set[str] = set()

    @classmethod
    def from_config(cls, name: str, raw: Mapping[str, Any]) -> Source:
        """Validate ``raw`` (one entry of the sources file) and build the source."""
        return cls(name, cls.options_model.model_validate(dict(raw)))

    @abstractmethod
    def authenticate(self, request: InboundRequest) -> None:
        """Raise :class:`NotAuthentic` or :class:`MalformedRequest` unless the request is real."""

    def check_content_type(self, request: InboundRequest) -> None:
        if not self.content_types:
            return
        raw = request.headers.get("content-type", "")
        if raw in self._accepted_raw_content_types:
            return
        media_type = raw.split(";", 1)[0].strip().lower()
        if media_type not in self.content_types:
            raise WrongContentType(f"content type {media_type!r} not accepted")
        if len(self._accepted_raw_content_types) < 64:
            self._accepted_raw_content_types.add(raw)

    def parse(self, request: InboundRequest) -> Any:
        if not self.body_is_json:
            return None
        try:
            return orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest("body is not JSON") from exc

    def verify(self, request: InboundRequest) -> VerifiedEvent:
        """The whole check of one request; raises a :class:`Rejection`."""
        self.check_content_type(request)
        self.authenticate(request)
        document = self.parse(request)
        event_id = self.event_locator.find(request, document)
        if event_id is None or len(event_id) > MAX_ID_LENGTH:
            raise MalformedRequest("no usable event id")
        payment_id = self.payment_locator.find(request, document)
        if payment_id is None or len(payment_id) > MAX_ID_LENGTH:
            raise Unroutable(
                "no payment id",
                source=self.name,
                event_id=event_id,
                received_at_ms=request.received_at_ms,
            )
        # Positional: a NamedTuple built with keywords costs twice as much.
        return VerifiedEvent(self.name, event_id, payment_id, request.received_at_ms, request.body)
