"""The one error tree of the KartaPay client.

::

    KartaPayError                      anything the client raises on purpose
    ├── ApiError                       the API answered with an error status (status_code, detail,
    │   │                              retry_after); raised as is for statuses not listed below
    │   ├── BadRequestError            400: the request was refused as invalid
    │   ├── AuthError                  401/403: the token is missing, wrong or not allowed
    │   │   ├── UnauthorizedError      401
    │   │   └── ForbiddenError         403
    │   ├── NotFoundError              404: no payment with that id (maybe not yet)
    │   ├── RateLimitedError           429: retry_after = seconds to wait, or None
    │   └── ServerError                5xx
    ├── InvalidResponseError           2xx whose body is not JSON or not the spec's shape
    └── TransportError                 no answer: connection refused/reset, protocol error, …
        └── RequestTimeoutError        connect/read/write/pool timeout

Messages hold the method, the path, the status and a short ``detail`` from the error body.
They never hold the token or any request header; the underlying httpx exception (which holds
the request, headers included) is not kept as an attribute, only chained as ``__cause__``
for tracebacks, which print its message and not its request.
"""

from __future__ import annotations

MAX_DETAIL_CHARS = 200


class KartaPayError(Exception):
    """Base of every error the KartaPay client raises."""

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class ApiError(KartaPayError):
    """The API answered with a status that is not a success.

    ``retry_after`` is the parsed ``Retry-After`` header (seconds, never negative) when the
    answer had one, whatever its status; ``RateLimitedError`` is where it matters most.
    """

    def __init__(
        self,
        status_code: int,
        *,
        method: str = "",
        path: str = "",
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = f"{method} {path} -> {status_code}".strip()
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message, method=method, path=path)
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


class BadRequestError(ApiError):
    """400: the API refused the request as invalid (bad body, bad query, forbidden transition)."""


class AuthError(ApiError):
    """401 or 403: the Bearer token is missing, wrong, or not allowed to do this."""


class UnauthorizedError(AuthError):
    """401: the Bearer token is missing or wrong."""


class ForbiddenError(AuthError):
    """403: the token is valid but not allowed to do this."""


class NotFoundError(ApiError):
    """404: no payment with that id (the API may not know a new payment yet)."""


class RateLimitedError(ApiError):
    """429: too many requests; wait ``retry_after`` seconds (``None`` when not said)."""


class ServerError(ApiError):
    """5xx: the API failed; ``retry_after`` is set when a 503 said when to come back."""


class InvalidResponseError(KartaPayError):
    """A success status whose body is not JSON, or not shaped as the spec says."""

    def __init__(self, message: str, *, status_code: int, method: str = "", path: str = "") -> None:
        super().__init__(
            f"{method} {path} -> {status_code}: {message}".strip(), method=method, path=path
        )
        self.status_code = status_code


class TransportError(KartaPayError):
    """No answer from the API: the connection failed, broke, or spoke bad HTTP."""


class RequestTimeoutError(TransportError):
    """No answer in time: a connect, read, write or pool timeout."""


_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    429: RateLimitedError,
}


def error_class_for(status_code: int) -> type[ApiError]:
    """The error class raised for an error status."""
    if status_code >= 500:
        return ServerError
    return _ERRORS_BY_STATUS.get(status_code, ApiError)


def short_detail(text: str) -> str | None:
    """A one-line, bounded excerpt of an error body for messages."""
    line = " ".join(text.split())
    if not line:
        return None
    if len(line) > MAX_DETAIL_CHARS:
        return line[: MAX_DETAIL_CHARS - 1] + "…"
    return line
