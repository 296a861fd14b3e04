"""Typed models of the KartaPay REST API, field for field as ``kartapay-api-spec.json`` has them.

Attribute names are the spec's own camelCase names (``createdAt``, ``clientId``), so a model
dumps to exactly the JSON the API speaks, with no aliases to keep in step. Every model allows
extra fields (the schema does), so nothing the API adds is lost: the sandbox's ``data.id``, say,
lands in ``model_extra``. See docs/kartapay-client.md for the decisions taken on the spec's quirks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The spec writes its patterns JavaScript-style, wrapped in slashes (`/^\+[0-9]+$/`);
# these are the same patterns with the slashes stripped.
LOCALE_PATTERN = r"^[a-z]{2}-[A-Z]{2}$"
PHONE_PATTERN = r"^\+[0-9]+$"

GatewayCode = Literal["HOL", "HRM", "MVK", "MVM", "PYP", "STR"]
"""The plan codes of the payment gateways (``Plan.source``)."""

GATEWAY_CODES: tuple[GatewayCode, ...] = ("HOL", "HRM", "MVK", "MVM", "PYP", "STR")

RedirectMode = Literal["embedded", "hosted"]


class PaymentStatus(StrEnum):
    """The status of a payment (``Payment.status``)."""

    INIT = "init"
    PENDING = "pending"
    CANCELED = "canceled"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    CAPTURED = "captured"
    FAILED = "failed"
    COMPLETED = "completed"


class KartaPayModel(BaseModel):
    """Base of every KartaPay model: extra fields are kept, as the spec's schemas allow."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The model as plain JSON data: spec field names, unset (``None``) fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Amount(KartaPayModel):
    """An amount of money; the value is a decimal string, the currency an ISO 4217 code."""

    value: str
    currency: str


class PurchaseItem(KartaPayModel):
    """One item of a purchase."""

    name: str
    quantity: str
    amount: Amount


class Purchase(KartaPayModel):
    """The purchase data: its total and, optionally, its items."""

    total: Amount
    items: list[PurchaseItem] | None = None


class Context(KartaPayModel):
    """Contextual data of a payment; ``channels`` is what subscribers may filter on."""

    locale: Annotated[str, Field(pattern=LOCALE_PATTERN)] | None = None
    channels: list[str] | None = None
    redirectMode: RedirectMode | None = None
    terminalId: str | None = None


class Payee(KartaPayModel):
    """The payee data."""

    fullName: str | None = None


class Address(KartaPayModel):
    """The payer's address."""

    line1: str
    line2: str | None = None
    line3: str | None = None
    city: str
    state: str | None = None
    postcode: str | None = None
    country: str


class Payer(KartaPayModel):
    """The payer's billing data.

    The spec's ``required`` lists ``firstName`` and ``lastName``, which are not among its
    properties (``fullName`` is). We require only ``email``, the one listed field that exists, and
    keep ``fullName`` optional; a ``firstName``/``lastName`` sent anyway is kept as an extra field.
    """

    fullName: str | None = None
    email: str
    phone: Annotated[str, Field(pattern=PHONE_PATTERN)] | None = None
    address: Address | None = None


class Gateway(KartaPayModel):
    """A payment gateway the payee offers (``Plan.options``)."""

    code: str | None = None
    name: str | None = None
    image: str | None = None


class Plan(KartaPayModel):
    """The payment plan: the gateways on offer and the one the payer chose.

    The same model is the body of ``submit`` and the ``plan`` of a claim, where only ``source``
    is meaningful.
    """

    options: list[Gateway] | None = None
    source: GatewayCode | None = None


class Billing(KartaPayModel):
    """The provider-side billing data of a payment."""

    submitUrl: str | None = None
    approveUrl: str | None = None
    declineUrl: str | None = None
    captureUrl: str | None = None
    providerId: str | None = None
    traces: list[Any] | None = None
    intent: dict[str, Any] | None = None
    proof: str | None = None
    signature: str | None = None


class Payment(KartaPayModel):
    """A payment as the API returns it. The spec gives it no ``id``; see ``PaymentRecord``.

    Only ``purchase`` is required by the spec, so ``status`` and every timestamp may be ``None``.
    Timestamps are kept as the strings the API sent, so a payment re-serialises unchanged.
    """

    status: PaymentStatus | None = None
    captured: bool | None = None
    context: Context | None = None
    payee: Payee | None = None
    payer: Payer | None = None
    purchase: Purchase
    clientId: str | None = None
    clientNote: str | None = None
    plan: Plan | None = None
    cancelUrl: str | None = None
    successUrl: str | None = None
    billing: Billing | None = None
    createdAt: str | None = None
    canceledAt: str | None = None
    submittedAt: str | None = None
    approvedAt: str | None = None
    capturedAt: str | None = None
    failedAt: str | None = None
    completedAt: str | None = None

    @property
    def reported_id(self) -> str | None:
        """The ``id`` the server added to the body on its own (the sandbox does), if any.

        Not part of the spec: never rely on it where the id is known otherwise.
        """
        extra = self.model_extra or {}
        value = extra.get("id")
        return value if isinstance(value, str) and value else None


class Claim(KartaPayModel):
    """The body of ``POST /v1/payments``: the payment request."""

    context: Context | None = None
    payer: Payer | None = None
    purchase: Purchase
    clientId: str | None = None
    clientNote: str | None = None
    plan: Plan | None = None
    cancelUrl: str | None = None
    successUrl: str | None = None


class Page(KartaPayModel):
    """One page of ``GET /v1/payments``. Items carry no id unless the server adds one."""

    data: list[Payment] = Field(default_factory=list)
    total: int | None = None
    offset: int | None = None
    limit: int | None = None
    prev: str | None = None
    next: str | None = None


class PaymentEnvelope(KartaPayModel):
    """The answer of create, cancel and submit: the next step's URL and the payment."""

    next: str | None = None
    data: Payment


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A payment together with the id the client asked for (or learnt from ``Location``).

    ``id`` always comes from the request URL or the ``Location`` header of a create, never
    from the body. ``next`` is the envelope's next-step URL (create, cancel, submit only).
    """

    id: str
    payment: Payment
    next: str | None = None

    @property
    def status(self) -> PaymentStatus | None:
        """Shortcut for ``payment.status``."""
        return self.payment.status

    def to_json(self) -> dict[str, Any]:
        """The payment as fetched, as plain JSON, with ``id`` set to this record's id.

        This is the ``data`` of a delivery body: ``{"id": <payment id>, …the payment}``. Any
        ``id`` the server put in the body is replaced by the known one.
        """
        body = self.payment.to_json()
        body.pop("id", None)
        return {"id": self.id, **body}
