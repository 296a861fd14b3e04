"""The ``huri`` source: a generic HMAC of the body, its details configured.

The signature header (``signature_header``) holds ``signature_prefix`` followed by the HMAC
(``algorithm``: sha256, sha512 or sha1) of the body, encoded as ``hex`` or ``base64``, keyed with a
secret as written (several: rotation). With ``timestamp_header`` set, the signed message is
``"<timestamp>.<body>"`` and the timestamp (Unix seconds) must be within ``tolerance_s``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator

from service.api.ingest.sources.base import (
    InboundRequest,
    MalformedRequest,
    NotAuthentic,
    Source,
    SourceOptions,
)
from service.api.ingest.sources.stripe import MAX_TIMESTAMP_DIGITS, nonempty_secrets

ALGORITHMS: dict[str, Callable[..., hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "sha1": hashlib.sha1,
}


class HuriOptions(SourceOptions):
    secrets: list[str] = Field(min_length=1, description="HMAC keys as written; several: rotation.")
    signature_header: str = Field("X-Huri-Signature", min_length=1)
    algorithm: Literal["sha256", "sha512", "sha1"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    signature_prefix: str = ""
    timestamp_header: str | None = None
    tolerance_s: int = Field(300, gt=0, le=3600)

    _secrets = field_validator("secrets")(nonempty_secrets)

    @field_validator("signature_header", "timestamp_header")
    @classmethod
    def _header_name(cls, name: str | None) -> str | None:
        if name is not None and (not name.strip() or any(c in name for c in " :\r\n\t")):
            raise ValueError(f"{name!r} is not a header name")
        return name.strip() if name is not None else None


class HuriSource(Source):
    """``POST`` with a configurable HMAC signature header."""

    options_model = HuriOptions

    def __init__(self, name: str, options: SourceOptions) -> None:
        super().__init__(name, options)
        assert isinstance(options, HuriOptions)
        self.keys = tuple(secret.encode() for secret in options.secrets)
        self.digest = ALGORITHMS[options.algorithm]
        self.encoding = options.encoding
        self.prefix = options.signature_prefix
        # Lower case, as InboundRequest's header names (defaults are not run through validators).
        self.signature_header = options.signature_header.lower()
        self.timestamp_header = (
            options.timestamp_header.lower() if options.timestamp_header else None
        )
        self.tolerance_s = options.tolerance_s

    def _offered(self, request: InboundRequest) -> bytes:
        header = request.headers.get(self.signature_header)
        if not header:
            raise NotAuthentic(f"no {self.signature_header} header")
        header = header.strip()
        if not header.startswith(self.prefix):
            raise NotAuthentic("signature without the configured prefix")
        encoded = header[len(self.prefix) :].strip()
        try:
            if self.encoding == "hex":
                return bytes.fromhex(encoded)
            return base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise NotAuthentic("signature is not " + self.encoding) from None

    def authenticate(self, request: InboundRequest) -> None:
        offered = self._offered(request)
        message = request.body
        if self.timestamp_header is not None:
            raw = (request.headers.get(self.timestamp_header) or "").strip()
            if not raw:
                raise MalformedRequest(f"no {self.timestamp_header} header")
            if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_TIMESTAMP_DIGITS:
                raise MalformedRequest(f"{self.timestamp_header} is not a Unix time")
            if abs(time.time() - int(raw)) > self.tolerance_s:
                raise NotAuthentic("timestamp outside tolerance")
            message = raw.encode() + b"." + request.body
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(hmac.new(key, message, self.digest).digest(), offered)
        if not matched:
            raise NotAuthentic("no signature matched")
