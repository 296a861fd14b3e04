"""Pure-ASGI middleware of the sandbox, applied to ``/v1`` only: injected faults (latency, 500,
429 + Retry-After), then Bearer auth. The ``/_sandbox`` control endpoints are left alone.

Both read the running sandbox from the lifespan state (``scope["state"]["sandbox"]``).
"""

from __future__ import annotations

import asyncio
import hmac

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.errors import error_response
from sandbox.state import Sandbox

log = structlog.get_logger("sandbox.api")


def _api_request(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/"))


def _sandbox(scope: Scope) -> Sandbox:
    sandbox: Sandbox = scope["state"]["sandbox"]
    return sandbox


class FaultInjectionMiddleware:
    """Adds latency, and answers a configured share of API requests with 500 or 429."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _api_request(scope):
            await self.app(scope, receive, send)
            return
        sandbox = _sandbox(scope)
        config = sandbox.config
        if config.latency_s > 0:
            await asyncio.sleep(config.latency_s)
        draw = sandbox.rng.random()
        if draw < config.error_500_ratio:
            log.info("injected 500", path=scope["path"])
            response = error_response(500, "injected failure")
        elif draw < config.error_500_ratio + config.error_429_ratio:
            log.info("injected 429", path=scope["path"])
            response = error_response(
                429, "rate limited", headers={"Retry-After": str(config.retry_after_s)}
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class BearerAuthMiddleware:
    """401 for an API request without the one valid Bearer token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _api_request(scope):
            await self.app(scope, receive, send)
            return
        expected = _sandbox(scope).config.token.encode()
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, offered = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(offered.strip(), expected):
            response = error_response(
                401, "missing or invalid Bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
