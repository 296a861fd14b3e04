"""Client of the KartaPay REST API: models, errors and the async httpx client.

See docs/kartapay-client.md. Everything public is re-exported here. ``SPEC_PATH`` is the
project's copy of the API's OpenAPI document, the contract the client and the sandbox follow.
"""

from pathlib import Path

from service.kartapay.client import KartaPayClient
from service.kartapay.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ForbiddenError,
    InvalidResponseError,
    KartaPayError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from service.kartapay.models import (
    GATEWAY_CODES,
    Address,
    Amount,
    Billing,
    Claim,
    Context,
    Gateway,
    GatewayCode,
    Page,
    Payee,
    Payer,
    Payment,
    PaymentEnvelope,
    PaymentRecord,
    PaymentStatus,
    Plan,
    Purchase,
    PurchaseItem,
)
from service.retry_after import parse_retry_after

SPEC_PATH = Path(__file__).with_name("kartapay-api-spec.json")

__all__ = [
    "GATEWAY_CODES",
    "SPEC_PATH",
    "Address",
    "Amount",
    "ApiError",
    "AuthError",
    "BadRequestError",
    "Billing",
    "Claim",
    "Context",
    "ForbiddenError",
    "Gateway",
    "GatewayCode",
    "InvalidResponseError",
    "KartaPayClient",
    "KartaPayError",
    "NotFoundError",
    "Page",
    "Payee",
    "Payer",
    "Payment",
    "PaymentEnvelope",
    "PaymentRecord",
    "PaymentStatus",
    "Plan",
    "Purchase",
    "PurchaseItem",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "TransportError",
    "UnauthorizedError",
    "parse_retry_after",
]
