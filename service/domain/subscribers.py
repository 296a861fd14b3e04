"""Subscribers: the model, its validation, its event/source/channel filters, and the YAML file.

A subscriber is an internal HTTP endpoint that receives signed ``payment.<status>`` events.
Subscribers come from ``KARTAHOOK_SUBSCRIBERS_FILE`` (loaded into Redis at start by the API and
by every worker) and from the admin API. The registry in Redis is
:mod:`service.store.subscribers`; nothing here touches Redis.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service import config_files
from service.domain.signing import decode_secret, generate_secret, sign_headers
from service.errors import SubscriberError as SubscriberError
from service.targets import ForbiddenTargets, check_target

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Headers that delivery sets itself; a subscriber's extra headers may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "idempotency-key",
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
    }
)


# Previous secrets kept through overlapping rotations, at most (the newest ones).
MAX_PREVIOUS_SECRETS = 3


class PreviousSecret(BaseModel):
    """A secret replaced by a rotation, still signed with until ``expires_ms``."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(repr=False)
    expires_ms: int


class Subscriber(BaseModel):
    """One internal endpoint and what it subscribed to."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    url: str
    secret: str = Field(default_factory=generate_secret, repr=False)
    events: list[str] = Field(default_factory=lambda: ["payment.*"], min_length=1)
    channels: list[str] | None = None
    """Deliver only payments whose ``context.channels`` share one of these."""
    sources: list[str] | None = None
    """Deliver only transitions revealed by one of these inbound sources."""
    enabled: bool = True
    disabled_reason: str | None = None
    concurrency: int | None = Field(None, ge=1, le=1000)
    headers: dict[str, str] = Field(default_factory=dict)
    origin: Literal["file", "api"] = "api"
    updated_at: float = Field(default_factory=time.time)
    previous_secrets: list[PreviousSecret] = Field(default_factory=list, repr=False)
    """Secrets replaced by a rotation and still in their overlap: deliveries carry a signature
    with each of them too. Never shown by the API (:meth:`public`) nor logged."""

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: str) -> str:
        if not value.startswith("whsec_"):
            raise ValueError("the secret must start with whsec_")
        decode_secret(value)
        return value

    @field_validator("events")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not re.fullmatch(r"payment\.[a-z*?\[\]]+|\*", pattern):
                raise ValueError(f"event pattern {pattern!r} must look like payment.* or payment.x")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by kartahook and cannot be overridden")
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
        return value

    def cap(self, default: int) -> int:
        """The concurrency cap of this subscriber."""
        return self.concurrency or default

    def public(self) -> dict[str, Any]:
        """The subscriber as the admin API shows it: everything but its secrets (the expiry of
        a rotation's previous secret is shown, as ``previous_secret_expires_ms``)."""
        data = self.model_dump(exclude={"secret", "previous_secrets"})
        expiries = [p.expires_ms for p in self.previous_secrets]
        data["previous_secret_expires_ms"] = max(expiries) if expiries else None
        return data

    def signing_secrets(self, now_ms: int) -> list[str]:
        """The secrets a delivery is signed with now: the current one, then every previous
        one still in its overlap."""
        return [self.secret, *(p.secret for p in self.previous_secrets if p.expires_ms > now_ms)]

    def rotated(self, new_secret: str, overlap_s: int, now_ms: int) -> Subscriber:
        """This subscriber with ``new_secret``; the current one kept for ``overlap_s`` (0: not
        at all), with the previous ones still in their overlap."""
        kept = [p for p in self.previous_secrets if p.expires_ms > now_ms]
        if overlap_s > 0:
            kept.append(PreviousSecret(secret=self.secret, expires_ms=now_ms + overlap_s * 1000))
            kept = kept[-MAX_PREVIOUS_SECRETS:]
        else:
            kept = []
        return self.model_copy(update={"secret": new_secret, "previous_secrets": kept})

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Subscriber:
        return cls.model_validate(orjson.loads(raw))

    def wants(self, event_type: str, source: str, payment: Mapping[str, Any]) -> bool:
        """Whether this subscriber asked for this event (enabled state is checked separately)."""
        if not any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events):
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.channels is not None:
            context = payment.get("context")
            channels = context.get("channels") if isinstance(context, dict) else None
            if not isinstance(channels, list) or not set(self.channels) & set(map(str, channels)):
                return False
        return True


USER_AGENT = "kartahook-delivery/1"


def signed_headers(
    subscriber: Subscriber, msg_id: str, body: bytes, now_ms: int, timestamp: int | None = None
) -> dict[str, str]:
    """What a delivery to ``subscriber`` carries: its extra headers, then ours: content type,
    user agent, Standard Webhooks headers (one signature per secret: :meth:`signing_secrets`)
    and ``Idempotency-Key`` (= ``webhook-id``)."""
    headers = dict(subscriber.headers)
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **sign_headers(subscriber.signing_secrets(now_ms), msg_id, body, timestamp),
            "idempotency-key": msg_id,
        }
    )
    return headers


def host_allowed(host: str, allowlist: Iterable[str]) -> bool:
    """Whether ``host`` is in the allowlist: exact host names, ``*.domain`` wildcards, or CIDRs.

    Host names are compared as written, never resolved: a CIDR entry only admits IP literals.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in allowlist:
        entry = entry.strip().lower()
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry.rstrip("."):
            return True
    return False


def check_url(url: str, allowlist: Iterable[str]) -> None:
    """Raise :class:`SubscriberError` unless ``url`` is http(s) and its host is allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SubscriberError("invalid_url", f"invalid URL: {exc}") from exc
    del port
    if parts.scheme not in ("http", "https"):
        raise SubscriberError("invalid_url", "the URL must start with http:// or https://")
    if not parts.hostname:
        raise SubscriberError("invalid_url", "the URL has no host")
    if parts.username or parts.password:
        raise SubscriberError("invalid_url", "the URL must not carry credentials")
    if not host_allowed(parts.hostname, allowlist):
        raise SubscriberError(
            "host_not_allowed",
            f"host {parts.hostname!r} is outside the subscriber allowlist "
            "(KARTAHOOK_SUBSCRIBER_ALLOWLIST)",
        )


# C0 controls, DEL and C1 controls: never in a URL or a header (CR/LF would split the request).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character(text: str) -> str | None:
    """The first control character in ``text`` as ``U+XXXX at position n``, or None."""
    found = CONTROL_CHARACTERS.search(text)
    return None if found is None else f"U+{ord(found.group()):04X} at position {found.start()}"


def check_control_characters(data: Mapping[str, Any]) -> None:
    """Raise :class:`SubscriberError` ``control_characters`` when the URL, a header name or a
    header value holds a control character. The message never repeats a header's value."""
    url = data.get("url")
    if isinstance(url, str) and (where := control_character(url)) is not None:
        raise SubscriberError("control_characters", f"url: a control character ({where})")
    headers = data.get("headers")
    if not isinstance(headers, Mapping):
        return
    for name, value in headers.items():
        if isinstance(name, str) and (where := control_character(name)) is not None:
            raise SubscriberError(
                "control_characters", f"headers: a header name has a control character ({where})"
            )
        if isinstance(value, str) and (where := control_character(value)) is not None:
            raise SubscriberError(
                "control_characters",
                f"headers.{name}: the value has a control character ({where})",
            )
        if isinstance(value, str) and not value.isascii():
            raise SubscriberError(
                "invalid_subscriber",
                f"headers.{name}: the value must be ASCII (HTTP sends no other)",
            )


def check_subscriber(
    subscriber: Subscriber, allowlist: Iterable[str], forbidden: ForbiddenTargets | None = None
) -> None:
    """Raise :class:`SubscriberError` unless ``subscriber`` may be sent to now: no control
    characters, the URL allowed and not one of kartahook's own listeners (no DNS here)."""
    check_control_characters({"url": subscriber.url, "headers": subscriber.headers})
    check_url(subscriber.url, allowlist)
    if forbidden is not None:
        check_target(subscriber.url, forbidden)


def build_subscriber(
    data: Mapping[str, Any],
    allowlist: Iterable[str],
    forbidden: ForbiddenTargets | None = None,
) -> Subscriber:
    """A validated subscriber from untrusted data; :class:`SubscriberError` says what is wrong.

    ``forbidden``: kartahook's own listeners, refused whatever the allowlist says."""
    check_control_characters(data)
    try:
        subscriber = Subscriber.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        code = "invalid_url" if where == "url" else "invalid_subscriber"
        raise SubscriberError(code, f"{where}: {first['msg']}") from exc
    check_subscriber(subscriber, allowlist, forbidden)
    return subscriber


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with ``${NAME}`` / ``${NAME:-default}`` expanded (:mod:`service.config_files`);
    an unset name without a default is a ``missing_env`` error naming it."""
    try:
        return config_files.expand_env(value, env)
    except config_files.ConfigFileError as exc:
        raise SubscriberError("missing_env", str(exc)) from None


def load_subscribers_file(
    path: Path,
    allowlist: Iterable[str],
    env: Mapping[str, str] | None = None,
    forbidden: ForbiddenTargets | None = None,
) -> list[Subscriber]:
    """Parse and validate a subscribers YAML file (``subscribers: [{id, url, …}]``);
    ``forbidden``: kartahook's own listeners (:func:`build_subscriber`)."""
    allowed = list(allowlist)
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict) or not isinstance(document.get("subscribers", []), list):
        raise SubscriberError("invalid_file", f"{path}: expected 'subscribers:' with a list")
    seen: set[str] = set()
    result: list[Subscriber] = []
    for index, entry in enumerate(document.get("subscribers") or []):
        if not isinstance(entry, dict):
            raise SubscriberError("invalid_file", f"{path}: subscriber #{index} is not a mapping")
        try:
            data = expand_env(entry, os.environ if env is None else env)
            data["origin"] = "file"
            subscriber = build_subscriber(data, allowed, forbidden)
        except SubscriberError as exc:
            raise SubscriberError(exc.code, f"{path}: subscriber #{index}: {exc.message}") from exc
        if subscriber.id in seen:
            raise SubscriberError(
                "invalid_file", f"{path}: duplicate subscriber id {subscriber.id}"
            )
        seen.add(subscriber.id)
        result.append(subscriber)
    return result
