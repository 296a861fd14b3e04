"""The ``stripe`` source: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=…][,v0=…]``.

Each ``v1`` is the hex HMAC-SHA256 of ``"<t>.<body>"`` keyed with the endpoint secret exactly as
written (the whole ``whsec_…`` string as UTF-8, not base64-decoded, unlike Standard Webhooks).
Any ``v1`` may match any configured secret (several during a rotation); ``v0`` is ignored; ``t``
must be within ``tolerance_s`` of now.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import ClassVar

from pydantic import Field, field_validator

from service.api.ingest.sources.base import (
    InboundRequest,
    MalformedRequest,
    NotAuthentic,
    Source,
    SourceOptions,
)

SIGNATURE_HEADER = "stripe-signature"
# Larger than any Unix time in seconds for the next millennia; longer values are malformed.
MAX_TIMESTAMP_DIGITS = 12


def nonempty_secrets(secrets: list[str]) -> list[str]:
    """The secrets, stripped; an empty one is an error (an unset ``${ENV}``, most often)."""
    stripped = [secret.strip() for secret in secrets]
    if any(not secret for secret in stripped):
        raise ValueError("a secret is empty (is its ${ENV} variable set?)")
    return stripped


class StripeOptions(SourceOptions):
    secrets: list[str] = Field(min_length=1, description="Endpoint secrets; several: rotation.")
    tolerance_s: int = Field(300, gt=0, le=3600)

    _secrets = field_validator("secrets")(nonempty_secrets)


class StripeSource(Source):
    """``POST`` signed with ``Stripe-Signature``."""

    options_model = StripeOptions
    default_event_id: ClassVar[str | tuple[str, ...] | None] = "id"
    default_payment_id: ClassVar[str | None] = "data.object.metadata.paymentId"

    def __init__(self, name: str, options: SourceOptions) -> None:
        super().__init__(name, options)
        assert isinstance(options, StripeOptions)
        self.keys = tuple(secret.encode() for secret in options.secrets)
        self.tolerance_s = options.tolerance_s

    def authenticate(self, request: InboundRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            raise NotAuthentic("no Stripe-Signature header")
        timestamp_raw: str | None = None
        offered: list[bytes] = []
        for item in header.split(","):
            scheme, sep, value = item.strip().partition("=")
            if not sep:
                continue
            if scheme == "t":
                timestamp_raw = value.strip()
            elif scheme == "v1" and value.strip():
                offered.append(value.strip().lower().encode("latin-1"))
        if timestamp_raw is None:
            raise MalformedRequest("Stripe-Signature has no timestamp")
        if (
            not timestamp_raw.isascii()
            or not timestamp_raw.isdigit()
            or len(timestamp_raw) > MAX_TIMESTAMP_DIGITS
        ):
            raise MalformedRequest("Stripe-Signature timestamp is not a Unix time")
        timestamp = int(timestamp_raw)
        if not offered:
            raise NotAuthentic("no v1 signature")
        if abs(time.time() - timestamp) > self.tolerance_s:
            raise NotAuthentic("timestamp outside tolerance")
        signed = timestamp_raw.encode() + b"." + request.body
        for key in self.keys:
            expected = hmac.new(key, signed, hashlib.sha256).hexdigest().encode()
            for candidate in offered:
                if hmac.compare_digest(expected, candidate):
                    return
        raise NotAuthentic("no signature matched")
