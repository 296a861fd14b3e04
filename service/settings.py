"""Settings for every kartahook process, read from ``KARTAHOOK_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """One settings object, built once per process and handed to whoever needs it."""

    model_config = SettingsConfigDict(env_prefix="KARTAHOOK_", extra="ignore")

    # Infrastructure
    redis_url: str | None = None
    redis_timeout_s: float = Field(0.5, gt=0, description="Deadline for one Redis write.")

    # KartaPay REST API
    kartapay_url: str = "http://127.0.0.1:8081"
    kartapay_token: SecretStr = SecretStr("sandbox-token")
    kartapay_language: str = "en-US"
    kartapay_timeout_s: float = Field(5.0, gt=0)

    # Files
    sources_file: Path | None = None
    subscribers_file: Path | None = None

    # Admin
    admin_token: SecretStr | None = None

    # Logging
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    # Ingestion
    max_body_bytes: int = Field(256 * 1024, gt=0)
    dedupe_ttl_s: int = Field(4 * 24 * 3600, ge=72 * 3600)
    raw_ttl_s: int = Field(7 * 24 * 3600, gt=0)
    trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.1"])
    retry_after_s: int = Field(5, gt=0)
    backlog_high_water: int = Field(100_000, gt=0)

    # Queue
    queue_name: str = "arq:queue"

    # Delivery
    subscriber_allowlist: CommaList = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "localhost"]
    )

    @field_validator("trusted_proxies", "subscriber_allowlist", mode="before")
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        return _split_commas(value)
