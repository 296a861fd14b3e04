"""Settings of one KartaPay sandbox: auth, lifecycle pace, webhooks (KartaPay's and the
providers'), and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sandbox.providers.base import STATUSES, ProviderSettings
from service.domain.signing import decode_secret

WEBHOOK_MODES = ("kartapay", "provider", "both")

# Fields that ``POST /_sandbox/faults`` may change while the sandbox runs, with their types.
RUNTIME_FIELDS: dict[str, type] = {
    "latency_s": float,
    "error_500_ratio": float,
    "error_429_ratio": float,
    "retry_after_s": int,
    "fail_ratio": float,
    "step_delay_s": float,
    "duplicate_webhooks": bool,
    "out_of_order_webhooks": bool,
    "drop_statuses": tuple,
}
_RATIOS = ("fail_ratio", "error_500_ratio", "error_429_ratio")
_NON_NEGATIVE = (
    "step_delay_s",
    "latency_s",
    "retry_after_s",
    "out_of_order_window_s",
    "webhook_backoff_s",
    "webhook_backoff_max_s",
)


@dataclass
class SandboxConfig:
    """How the sandbox behaves. A running sandbox works on its own copy of this object."""

    token: str = "sandbox-token"  # noqa: S105 (the well-known sandbox default)
    webhook_url: str | None = None
    webhook_secret: str | None = None  # whsec_…; webhooks are sent only with url and secret
    # Which webhooks a status change sends: KartaPay's own, its plan's provider's, or both.
    webhooks: str = "both"
    # kartahook's base URL: provider webhooks go to <kartahook_url>/v1/webhooks/<source>, and
    # only when it is set (callers that give just webhook_url keep KartaPay's webhooks only).
    kartahook_url: str | None = None
    drop_statuses: tuple[str, ...] = ()  # statuses whose webhooks (of every kind) are not sent
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    step_delay_s: float = 0.3  # between automatic lifecycle steps (submitted -> approved -> …)
    fail_ratio: float = 0.0  # share of submitted payments that end in `failed`
    latency_s: float = 0.0  # added to every /v1 response
    error_500_ratio: float = 0.0  # share of /v1 requests answered 500
    error_429_ratio: float = 0.0  # share of /v1 requests answered 429 + Retry-After
    retry_after_s: int = 1
    duplicate_webhooks: bool = False  # send every webhook twice, with the same webhook-id
    out_of_order_webhooks: bool = False  # shuffle webhooks collected within a short window
    out_of_order_window_s: float = 0.5
    webhook_max_attempts: int = 5  # per copy of a webhook, first attempt included
    webhook_backoff_s: float = 0.5  # first retry delay; doubles each time
    webhook_backoff_max_s: float = 10.0
    webhook_timeout_s: float = 5.0
    webhook_concurrency: int = 16  # webhook POSTs in flight at once
    sent_log_size: int = 1000  # how many sends GET /_sandbox/webhooks remembers
    default_limit: int = 10
    max_limit: int = 100
    seed: int | None = None  # makes ids, webhook ids and random choices reproducible

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when a value is out of range."""
        if not self.token:
            raise ValueError("token must not be empty")
        for name in _RATIOS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.error_500_ratio + self.error_429_ratio > 1.0:
            raise ValueError("error_500_ratio + error_429_ratio must not exceed 1")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.webhook_max_attempts < 1 or self.webhook_concurrency < 1:
            raise ValueError("webhook_max_attempts and webhook_concurrency must be at least 1")
        if not 1 <= self.default_limit <= self.max_limit:
            raise ValueError("default_limit must be between 1 and max_limit")
        if self.webhook_secret is not None:
            decode_secret(self.webhook_secret)
        if self.webhooks not in WEBHOOK_MODES:
            raise ValueError(f"webhooks must be one of {', '.join(WEBHOOK_MODES)}")
        unknown = set(self.drop_statuses) - set(STATUSES)
        if unknown:
            raise ValueError(f"drop_statuses: unknown status {', '.join(sorted(unknown))}")
        if self.kartahook_url is not None and not self.kartahook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("kartahook_url must be an http(s) URL")
        if self.webhooks == "provider" and self.provider_base_url is None:
            raise ValueError("webhooks 'provider' needs kartahook_url")
        self.providers.validate()

    @property
    def provider_base_url(self) -> str | None:
        """Where provider webhooks go (``/v1/webhooks/<source>`` is appended), if anywhere."""
        return self.kartahook_url.rstrip("/") if self.kartahook_url else None

    @property
    def kartapay_webhooks(self) -> bool:
        """Whether KartaPay's own webhook is sent."""
        return self.webhooks != "provider" and bool(self.webhook_url and self.webhook_secret)

    @property
    def provider_webhooks(self) -> bool:
        """Whether the plan's provider webhook is sent."""
        return self.webhooks != "kartapay" and self.provider_base_url is not None

    def runtime_view(self) -> dict[str, Any]:
        """The values that can be changed at runtime (no secrets)."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}

    def update_runtime(self, changes: dict[str, Any]) -> None:
        """Apply changes to runtime fields atomically: all of them, or none (ValueError)."""
        unknown = set(changes) - set(RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"unknown or read-only fields: {', '.join(sorted(unknown))}")
        coerced: dict[str, Any] = {}
        for name, value in changes.items():
            kind = RUNTIME_FIELDS[name]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
            elif kind is tuple:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{name} must be a list of strings")
                coerced[name] = tuple(dict.fromkeys(value))
                continue
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            elif kind is int and not float(value).is_integer():
                raise ValueError(f"{name} must be an integer")
            coerced[name] = kind(value)
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        SandboxConfig(**{**current, **coerced})  # validates the combination
        for name, value in coerced.items():
            setattr(self, name, value)
