"""What every inbound source shares: the request it sees, the event it yields, and its rejections.

A source turns one HTTP request into a :class:`VerifiedEvent` or raises a :class:`Rejection`.
:meth:`Source.verify` is the template: content type, authenticity (the part each source writes),
JSON, then the event id and payment id found by configurable :class:`Locator` s.
"""

from __future__ import annotations

import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """A request refused by a source. ``reason`` is for logs only, never for response bodies;
    ``headers`` are added to the answer (``WWW-Authenticate`` of Basic sources)."""

    status: ClassVar[int] = 400
    outcome: ClassVar[str] = "rejected"
    public_message: ClassVar[str] = "rejected"

    def __init__(self, reason: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers


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


class Forbidden(Rejection):
    """Authentic, but the client address is outside the source's ``allowed_ips`` (403)."""

    status = 403
    outcome = "forbidden"
    public_message = "forbidden"


class SourceUnavailable(Rejection):
    """The request cannot be checked now (PayPal's certificate cannot be fetched): 503 with
    ``Retry-After``, so the provider retries; never 2xx, never 401."""

    status = 503
    outcome = "verification_unavailable"
    public_message = "temporarily unavailable"


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


_KEY_STEP = re.compile(r"([^\[\]]+)\[key=([^\]]+)\]")


@dataclass(frozen=True, slots=True)
class Locator:
    """Where to find a value: ``"header:<name>"``, ``"query:<name>"``, or a dotted JSON path.

    A path step ``name[key=K]`` picks, in the list ``name``, the ``{key, value}`` object whose
    ``key`` is ``K`` (``metadata[key=paymentId].value``): ``keys`` holds ``K`` (or None) per step.
    """

    kind: str
    path: tuple[str, ...]
    keys: tuple[str | None, ...] = ()

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
        steps = _split_path(spec)
        names: list[str] = []
        keys: list[str | None] = []
        for step in steps:
            if "[" in step or "]" in step:
                match = _KEY_STEP.fullmatch(step)
                if match is None:
                    raise ValueError(f"invalid path step {step!r} in {spec!r} (name[key=K])")
                names.append(match.group(1))
                keys.append(match.group(2))
            else:
                names.append(step)
                keys.append(None)
        return cls("json", tuple(names), tuple(keys))

    def find(self, request: InboundRequest, document: Any) -> str | None:
        """The value as a non-empty string, or None when it is absent, empty or not a scalar."""
        value: Any
        if self.kind == "header":
            value = request.headers.get(self.path[0])
        elif self.kind == "query":
            value = request.query.get(self.path[0])
        else:
            value = document
            for index, part in enumerate(self.path):
                if isinstance(value, dict):
                    value = value.get(part, _MISSING)
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = _MISSING
                if value is _MISSING:
                    return None
                key = self.keys[index] if self.keys else None
                if key is not None:
                    value = _pick_by_key(value, key)
                    if value is _MISSING:
                        return None
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, (str, int)):
            text = str(value).strip()
            return text or None
        return None


def _split_path(spec: str) -> list[str]:
    """The steps of a dotted path; dots inside ``[...]`` do not split."""
    steps: list[str] = []
    current: list[str] = []
    depth = 0
    for char in spec:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "." and depth == 0:
            steps.append("".join(current))
            current = []
        else:
            current.append(char)
    steps.append("".join(current))
    if not spec or any(not step for step in steps) or depth != 0:
        raise ValueError(f"invalid JSON path {spec!r}")
    return steps


def _pick_by_key(value: Any, key: str) -> Any:
    """In a list of ``{key, value}`` objects, the one whose ``key`` is ``key``."""
    if not isinstance(value, list):
        return _MISSING
    for item in value:
        if isinstance(item, dict) and item.get("key") == key:
            return item
    return _MISSING


def parse_locators(spec: str | list[str]) -> tuple[Locator, ...]:
    """One locator, or several whose values are joined with ``:`` (an event id)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("an empty list of locators")
    return tuple(Locator.parse(item) for item in specs)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceOptions(BaseModel):
    """Options every source accepts in the sources file. Sources extend this model."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(None, description="Source type, when it differs from its name.")
    event_id: str | list[str] | None = Field(
        None, description="Locator of the event id; a list: the values joined with ':'."
    )
    payment_id: str | None = Field(None, description="Locator of the KartaPay payment id.")
    content_types: list[str] | None = Field(None, description="Accepted content types.")
    allowed_ips: list[str] | None = Field(
        None, description="Client addresses or CIDRs allowed (after trusted proxies); else 403."
    )

    @field_validator("event_id")
    @classmethod
    def _event_locators(cls, spec: str | list[str] | None) -> str | list[str] | None:
        if spec is not None:
            parse_locators(spec)
        return spec

    @field_validator("payment_id")
    @classmethod
    def _payment_locator(cls, spec: str | None) -> str | None:
        if spec is not None:
            Locator.parse(spec)
        return spec

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, entries: list[str] | None) -> list[str] | None:
        if entries is not None:
            if not entries:
                raise ValueError("an empty list would refuse every request; omit it instead")
            for entry in entries:
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return entries


class Source(ABC):
    """One inbound source: one path, one way to verify, configurable id extraction."""

    options_model: ClassVar[type[SourceOptions]] = SourceOptions
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})
    default_event_id: ClassVar[str | tuple[str, ...] | None] = None
    default_payment_id: ClassVar[str | None] = None
    default_content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    body_is_json: ClassVar[bool] = True
    # True: the endpoint awaits :meth:`verify_async` (a source that does I/O to verify).
    is_async: ClassVar[bool] = False

    def __init__(self, name: str, options: SourceOptions) -> None:
        self.name = name
        self.options = options
        event_spec = options.event_id or self.default_event_id
        payment_spec = options.payment_id or self.default_payment_id
        if event_spec is None:
            raise ValueError("event_id: must be configured (this source type has no default)")
        if payment_spec is None:
            raise ValueError("payment_id: must be configured (this source type has no default)")
        self.event_locators = parse_locators(
            event_spec if isinstance(event_spec, str) else list(event_spec)
        )
        self.payment_locator = Locator.parse(payment_spec)
        content_types = (
            options.content_types
            if options.content_types is not None
            else self.default_content_types
        )
        self.content_types = frozenset(ct.lower() for ct in content_types)
        self.allowed_networks: tuple[IpNetwork, ...] | None = (
            tuple(ipaddress.ip_network(e.strip(), strict=False) for e in options.allowed_ips)
            if options.allowed_ips is not None
            else None
        )
        # Content-Type header values seen and accepted (a handful per sender): one set lookup.
        self._accepted_raw_content_types: set[str] = set()

    @classmethod
    def from_config(cls, name: str, raw: Mapping[str, Any]) -> Source:
        """Validate ``raw`` (one entry of the sources file) and build the source."""
        return cls(name, cls.options_model.model_validate(dict(raw)))

    async def start(self, stack: AsyncExitStack) -> None:
        """Acquire what the source needs while the app runs (the app's lifespan calls this);
        register its release on ``stack``. Most sources need nothing."""
        return None

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

    def check_client(self, request: InboundRequest) -> None:
        """Raise :class:`Forbidden` when ``allowed_ips`` is set and the client is outside it."""
        networks = self.allowed_networks
        if networks is None:
            return
        try:
            address = ipaddress.ip_address(request.client_ip or "")
        except ValueError:
            raise Forbidden("no usable client address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address in network for network in networks):
            raise Forbidden(f"client {address} outside allowed_ips")

    def parse(self, request: InboundRequest) -> Any:
        if not self.body_is_json:
            return None
        try:
            return orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise MalformedRequest("body is not JSON") from exc

    def event_body(self, request: InboundRequest) -> bytes:
        """What is stored as the event's raw body (the request body)."""
        return request.body

    def verify(self, request: InboundRequest) -> VerifiedEvent:
        """The whole check of one request; raises a :class:`Rejection`."""
        self.check_content_type(request)
        self.authenticate(request)
        self.check_client(request)
        return self.extract(request)

    async def verify_async(self, request: InboundRequest) -> VerifiedEvent:
        """:meth:`verify` for sources that do I/O to verify (``is_async``)."""
        return self.verify(request)

    def extract(self, request: InboundRequest) -> VerifiedEvent:
        """The event of an authentic request: JSON, then its event id and payment id."""
        document = self.parse(request)
        locators = self.event_locators
        if len(locators) == 1:
            event_id = locators[0].find(request, document)
        else:
            parts = [locator.find(request, document) for locator in locators]
            event_id = None if None in parts else ":".join(p for p in parts if p is not None)
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
        return VerifiedEvent(
            self.name, event_id, payment_id, request.received_at_ms, self.event_body(request)
        )
