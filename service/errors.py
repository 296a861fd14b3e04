"""The one error tree of the service (``service/`` and what ``workers/`` raise on its behalf).

::

    KartahookError                     anything kartahook raises on purpose
    ├── ConfigError                    a configuration is invalid (also a ValueError)
    │   ├── ConfigFileError            a file cannot be read, parsed or have its ${VAR}s expanded
    │   ├── SourceConfigError          the sources configuration (names the source and the problem)
    │   └── SubscriberError            a subscriber definition (file or admin API); ``code``
    ├── DomainError                    an event or a request breaks the domain's rules
    │   ├── UnknownStatusError         the payment's status is not one of the lifecycle's
    │   │                              (also a ValueError)
    │   └── SignatureError             no valid Standard Webhooks signature (message: logs only)
    │       ├── MissingHeaderError     a required header is missing or malformed
    │       └── TimestampError         the timestamp is outside the tolerance
    ├── StoreError                     Redis did not do what the store asked
    │   ├── RedisUnavailable           Redis could not take a write in time (the answer is 503)
    │   │   └── NotReplicated          fewer replicas than KARTAHOOK_REDIS_MIN_REPLICAS have it
    │   ├── StaleSubscribers           a script refused a stale copy of the subscriber registry
    │   └── RegistryKeepsChanging      ... on every reload (also a RuntimeError)
    ├── ApiError                       an HTTP answer: ``status_code``, ``code``, ``detail``;
    │   │                              rendered ``{"error": code, "detail": detail}``
    │   ├── BadRequest                 400 (``invalid_json``, ``invalid_query``)
    │   ├── Unauthorized               401 (``missing_token``; ``WWW-Authenticate: Bearer``)
    │   ├── Forbidden                  403 (``invalid_token``, ``admin_disabled``)
    │   ├── NotFound                   404 (``not_found``, ``unknown_subscriber``, …)
    │   ├── Conflict                   409 (``subscriber_exists``, ``delivery_pending``)
    │   ├── Gone                       410 (``body_expired``)
    │   └── Unprocessable              422 (``invalid_subscriber``, ``invalid_query``, …)
    └── (defined next to their code, subclassing it)
        ├── service.api.ingest.sources.base.Rejection   a webhook refused by its source
        ├── service.api.ingest.endpoint.ClientGone      the client left before its body came
        ├── service.api.middleware.BodyTooLarge         a body over the limit (413)
        ├── service.api.http_protocol.HeadersTooLarge   a header block over the limit (431)
        ├── service.api.ingest.sources.paypal.CertificateFetchError
        │                                              PayPal's certificate could not be fetched
        ├── service.targets.ForbiddenAddress            a host resolved to kartahook's own
        │                                               listener (also an OSError)
        ├── service.store.history.BadCursor             a list cursor the admin API did not
        │                                               write (also a ValueError; 400)
        └── workers.delivery.errors.FanoutError         the fan-out machinery itself

The KartaPay client keeps its own tree, :mod:`service.kartapay.errors` (``KartaPayError`` →
``ApiError`` (by status), ``InvalidResponseError``, ``TransportError``): what the payment
provider's API did, kept apart from what kartahook does.

The classes that used to live next to their code are re-exported there
(``service.store.subscribers.SubscriberError``, ``service.domain.signing.SignatureError``, …).
Messages never hold secrets, tokens or signatures. ``ApiError`` bodies are for API clients;
the messages of the other errors are for logs and operators.
"""

from __future__ import annotations

from typing import ClassVar


class KartahookError(Exception):
    """Base of every error kartahook raises on purpose."""


# --- configuration ---------------------------------------------------------------------------


class ConfigError(KartahookError, ValueError):
    """A configuration is invalid; the message says where and why."""


class ConfigFileError(ConfigError):
    """A configuration file cannot be read, parsed or expanded."""


class SourceConfigError(ConfigError):
    """The sources configuration is invalid; the message names the source and the problem."""


class SubscriberError(ConfigError):
    """A subscriber definition is invalid: ``code`` for machines, the message for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- domain ----------------------------------------------------------------------------------


class DomainError(KartahookError):
    """An event or a request breaks the domain's rules."""


class UnknownStatusError(DomainError, ValueError):
    """The payment's status is not one of the lifecycle's."""


class SignatureError(DomainError):
    """The request does not carry a valid signature. The message is for logs, never for bodies."""


class MissingHeaderError(SignatureError):
    """A required Standard Webhooks header is missing or malformed."""


class TimestampError(SignatureError):
    """The timestamp is outside the tolerance."""


# --- store -----------------------------------------------------------------------------------


class StoreError(KartahookError):
    """Redis did not do what the store asked."""


class RedisUnavailable(StoreError):
    """Redis could not take a write in time; the caller answers 503."""


class NotReplicated(RedisUnavailable):
    """``WAIT`` saw fewer replicas than ``KARTAHOOK_REDIS_MIN_REPLICAS`` take the write in time:
    the write may be on the primary, but it is not acknowledged (503)."""


class StaleSubscribers(StoreError):
    """The subscriber list the candidates were matched against has changed: nothing was written;
    refresh it and match again."""


class RegistryKeepsChanging(StoreError, RuntimeError):
    """The registry changed under every one of ``RELOAD_TRIES`` reloads of a cached copy."""


# --- HTTP-facing -----------------------------------------------------------------------------


class ApiError(KartahookError):
    """An answer to an API request: ``status_code``, a machine-readable ``code`` and a ``detail``
    for humans, rendered as ``{"error": code, "detail": detail}`` by one exception handler
    (:func:`service.api.admin.routes.api_error_response`). ``headers`` go with the answer."""

    status_code: ClassVar[int] = 400

    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class Unavailable(ApiError):
    """503: Redis did not answer in time (down, failing over, or slow); ``Retry-After`` says
    when to try again. Nothing was changed by a refused write."""

    status_code = 503


class BadRequest(ApiError):
    """400: the request cannot be read (not JSON, a bad query parameter)."""

    status_code = 400


class Unauthorized(ApiError):
    """401: no credentials."""

    status_code = 401


class Forbidden(ApiError):
    """403: credentials refused, or the API is off."""

    status_code = 403


class NotFound(ApiError):
    """404: no such route or resource."""

    status_code = 404


class Conflict(ApiError):
    """409: the resource exists already."""

    status_code = 409


class Gone(ApiError):
    """410: the resource is past retention."""

    status_code = 410


class Unprocessable(ApiError):
    """422: the request is well-formed but its content is invalid."""

    status_code = 422
