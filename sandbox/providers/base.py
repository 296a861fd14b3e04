"""What every provider module shares: its settings, the request it builds, and small helpers.

A provider turns one change of status of a payment into the request that provider would send to
kartahook (method, path, headers, body or query). Static parts (body, Basic auth) are built once
per event; signatures that carry a time are made again on every attempt (``sign``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from sandbox.payments_store import StatusChange

STATUSES = ("init", "submitted", "approved", "captured", "completed", "canceled", "failed")
HURI_ALGORITHMS = ("sha256", "sha512", "sha1")
HURI_ENCODINGS = ("hex", "base64")
# Currencies without minor units (Stripe's "zero-decimal" list, the ones KartaPay sees).
ZERO_DECIMAL = frozenset({"MGA", "KMF", "XOF", "XAF", "JPY", "KRW", "VND", "RWF", "UGX"})


@dataclass(frozen=True)
class ProviderSettings:
    """Secrets and credentials the sandbox signs provider webhooks with. The defaults match
    what ``kartahook run`` configures for its own sources; they are sandbox values only."""

    stripe_secret: str = field(default="whsec_kartahook_sandbox_stripe", repr=False)
    paypal_webhook_id: str = "WH-KARTAHOOK-SANDBOX"
    paypal_cert_cn: str = "messageverificationcerts.paypal.com"
    paypal_cert_host: str = "127.0.0.1"  # where the certificate is served over https
    paypal_cert_port: int = 0  # 0: a free port
    paypal_ca_out: str | None = None  # where the CA PEM is written (None: a temporary file)
    basic_user: str = "kartahook-sandbox"  # MVola MG, MVola KM and Holo
    basic_password: str = field(default="kartahook-sandbox-password", repr=False)
    huri_secret: str = field(default="huri_kartahook_sandbox", repr=False)
    huri_signature_header: str = "X-Huri-Signature"
    huri_algorithm: str = "sha256"
    huri_encoding: str = "hex"
    huri_signature_prefix: str = ""
    huri_timestamp_header: str | None = None  # set: sign "timestamp.body"

    def validate(self) -> None:
        """Raise ValueError when a value is unusable."""
        for name in ("stripe_secret", "paypal_webhook_id", "basic_user", "huri_secret"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if ":" in self.basic_user:
            raise ValueError("basic_user must not contain ':'")
        if self.huri_algorithm not in HURI_ALGORITHMS:
            raise ValueError(f"huri_algorithm must be one of {', '.join(HURI_ALGORITHMS)}")
        if self.huri_encoding not in HURI_ENCODINGS:
            raise ValueError(f"huri_encoding must be one of {', '.join(HURI_ENCODINGS)}")
        if not self.huri_signature_header:
            raise ValueError("huri_signature_header must not be empty")
        if not 0 <= self.paypal_cert_port <= 65535:
            raise ValueError("paypal_cert_port must be between 0 and 65535")


@dataclass(frozen=True)
class ProviderEvent:
    """One provider webhook: the request without its time-dependent signature."""

    source: str  # kartahook's source name, e.g. "stripe"
    event_id: str  # the id kartahook deduplicates it by (DESIGN's default locator)
    type: str  # the provider's event type or status
    status: str  # the KartaPay status that caused it
    payment_id: str
    method: str
    path: str  # under kartahook's base URL: /v1/webhooks/<source>
    body: bytes = b""
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


class Provider(Protocol):
    """A provider module's builder, bound to the sandbox's settings."""

    @property
    def source(self) -> str:
        """kartahook's source name, e.g. ``stripe``."""
        ...

    @property
    def plan_code(self) -> str:
        """KartaPay's plan code, e.g. ``STR``."""
        ...

    def build(self, change: StatusChange, nonce: str) -> ProviderEvent:
        """The webhook for a change of status; ``nonce`` (random hex) makes event ids unique."""
        ...

    def sign(self, event: ProviderEvent, now: float) -> dict[str, str]:
        """Headers that authenticate ``event`` at time ``now`` (added to ``event.headers``)."""
        ...


def sends_for(change: StatusChange) -> bool:
    """Whether a provider knows of the payment at this change: from submit on."""
    return change.status != "init" and "submittedAt" in change.payment


def webhook_path(source: str) -> str:
    return f"/v1/webhooks/{source}"


def provider_ref(change: StatusChange) -> str:
    """The provider's own id of the payment, stable across its statuses (from billing)."""
    provider_id = str(change.payment.get("billing", {}).get("providerId") or change.payment_id)
    return provider_id.split("_", 1)[-1].replace("-", "")


def epoch_seconds(at: str) -> int:
    """An ISO 8601 timestamp (``…Z``) as Unix seconds."""
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())


def iso_seconds(at: float) -> str:
    """Unix seconds as ISO 8601 UTC without fraction, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(int(at), UTC).isoformat().replace("+00:00", "Z")


def total(payment: dict[str, Any]) -> tuple[str, str]:
    """The payment's amount as written (a decimal string) and its currency."""
    value = payment.get("purchase", {}).get("total", {})
    return str(value.get("value", "0")), str(value.get("currency", "EUR"))


def minor_units(value: str, currency: str) -> int:
    """An amount in the currency's smallest unit, as Stripe writes it."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return 0
    exponent = 0 if currency.upper() in ZERO_DECIMAL else 2
    return int(amount.scaleb(exponent).to_integral_value())


def payer_phone(payment: dict[str, Any], default: str) -> str:
    """The payer's phone without ``+`` (MSISDN), or ``default``."""
    phone = payment.get("payer", {}).get("phone")
    return str(phone).lstrip("+") if phone else default


def basic_auth(user: str, password: str) -> tuple[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return ("Authorization", f"Basic {token}")


JSON = ("Content-Type", "application/json")
