"""Sources authenticated with HTTP Basic: ``mvola-mg`` (PUT), ``mvola-km`` (POST), ``holo`` (GET).

Several credentials are accepted at once (rotation); each is compared in constant time, and every
configured pair is compared whatever the outcome of the others. A 401 carries
``WWW-Authenticate: Basic realm="kartahook"``. MVola Madagascar may also restrict the client
address (``allowed_ips``, checked after the credentials: 403).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import ClassVar
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.ingest.sources.base import (
    InboundRequest,
    NotAuthentic,
    Source,
    SourceOptions,
)

CHALLENGE = ((b"www-authenticate", b'Basic realm="kartahook", charset="UTF-8"'),)


class Credential(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1)
    password: str = Field(min_length=1)

    @field_validator("username")
    @classmethod
    def _no_colon(cls, username: str) -> str:
        if ":" in username:
            raise ValueError("a Basic username cannot contain ':'")
        return username


class BasicAuthOptions(SourceOptions):
    credentials: list[Credential] = Field(
        min_length=1, description="username/password pairs; several: rotation."
    )


def _digest(username: bytes, password: bytes) -> bytes:
    # Fixed-length digests: compare_digest's time then does not depend on the lengths offered.
    return hashlib.sha256(username + b"\0" + password).digest()


class BasicAuthSource(Source):
    """HTTP Basic against any of the configured credentials."""

    options_model = BasicAuthOptions

    def __init__(self, name: str, options: SourceOptions) -> None:
        super().__init__(name, options)
        assert isinstance(options, BasicAuthOptions)
        self.credentials = tuple(
            _digest(c.username.encode(), c.password.encode()) for c in options.credentials
        )

    def authenticate(self, request: InboundRequest) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise NotAuthentic("no Authorization header", headers=CHALLENGE)
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise NotAuthentic("Authorization is not Basic", headers=CHALLENGE)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise NotAuthentic("Basic credentials are not base64", headers=CHALLENGE) from None
        username, sep, password = decoded.partition(b":")
        if not sep:
            raise NotAuthentic("Basic credentials have no ':'", headers=CHALLENGE)
        offered = _digest(username, password)
        matched = False
        for expected in self.credentials:
            matched |= hmac.compare_digest(offered, expected)
        if not matched:
            raise NotAuthentic("wrong credentials", headers=CHALLENGE)


class MVolaMadagascarSource(BasicAuthSource):
    """MVola Madagascar's callback: ``PUT``, one transaction through several statuses."""

    methods: ClassVar[frozenset[str]] = frozenset({"PUT"})
    default_event_id: ClassVar[str | tuple[str, ...] | None] = (
        "serverCorrelationId",
        "transactionStatus",
    )
    default_payment_id: ClassVar[str | None] = "metadata[key=paymentId].value"


class MVolaComorosSource(BasicAuthSource):
    """MVola Comoros' callback: ``POST``."""

    default_event_id: ClassVar[str | tuple[str, ...] | None] = ("transID", "status")
    default_payment_id: ClassVar[str | None] = "transIDP"


class HoloSource(BasicAuthSource):
    """Holo's callback: ``GET`` with its parameters in the query string and no body.

    No default locators (configure ``query:<name>``); no content type is required. The stored
    "body" of an event is its query string, the whole of what Holo sent.
    """

    methods: ClassVar[frozenset[str]] = frozenset({"GET"})
    default_content_types: ClassVar[tuple[str, ...]] = ()
    body_is_json: ClassVar[bool] = False

    def event_body(self, request: InboundRequest) -> bytes:
        return urlencode(request.query).encode()
