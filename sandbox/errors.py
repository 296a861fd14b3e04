"""Errors of the sandbox API and their JSON bodies.

Every error answer has the NestJS shape the real API uses:
``{"statusCode": 400, "error": "Bad Request", "message": "…"}``.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An error answer of the API; raised by handlers and rendered as JSON."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    """400: the request is invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class NotFound(ApiError):
    """404: no payment with that id."""

    def __init__(self, message: str = "payment not found") -> None:
        super().__init__(404, message)


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The JSON answer for an error."""
    body = {
        "statusCode": status_code,
        "error": HTTPStatus(status_code).phrase,
        "message": message,
    }
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )
