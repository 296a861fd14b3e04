"""The native ``kartapay`` source: Standard Webhooks, several secrets at once for rotation."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from service.api.ingest.sources.base import (
    InboundRequest,
    MalformedRequest,
    NotAuthentic,
    Source,
    SourceOptions,
)
from service.domain import signing


class KartaPayOptions(SourceOptions):
    secrets: list[str] = Field(min_length=1, description="whsec_ secrets; several for rotation.")
    tolerance_s: int = Field(signing.DEFAULT_TOLERANCE_S, gt=0, le=3600)

    @field_validator("secrets")
    @classmethod
    def _decodable(cls, secrets: list[str]) -> list[str]:
        for secret in secrets:
            if not secret.strip():
                raise ValueError("a secret is empty (is its ${ENV} variable set?)")
            signing.decode_secret(secret.strip())
        return [secret.strip() for secret in secrets]


class KartaPaySource(Source):
    """``POST`` with ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``."""

    options_model = KartaPayOptions
    default_event_id: ClassVar[str | None] = "header:webhook-id"
    default_payment_id: ClassVar[str | None] = "data.id"

    def __init__(self, name: str, options: SourceOptions) -> None:
        super().__init__(name, options)
        assert isinstance(options, KartaPayOptions)
        self.keys = tuple(signing.decode_secret(secret) for secret in options.secrets)
        self.tolerance_s = options.tolerance_s

    def authenticate(self, request: InboundRequest) -> None:
        try:
            signing.verify(self.keys, request.headers, request.body, tolerance_s=self.tolerance_s)
        except signing.MissingHeaderError as exc:
            raise MalformedRequest(str(exc)) from exc
        except signing.SignatureError as exc:  # TimestampError included
            raise NotAuthentic(str(exc)) from exc
