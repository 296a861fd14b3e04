"""The service's ASGI app: webhook requests go straight to the endpoint, the rest to Starlette.

``/v1/webhooks/{source}`` is the hot path. What middleware does for the other paths (request id
and log line, :class:`~service.api.middleware.RequestContextMiddleware`; body limit,
:class:`~service.api.middleware.BodySizeLimitMiddleware`) is done here inline, once, with no
Starlette, exception layer or wrapped ``send`` in between; the answer is sent in two messages
with the request id header already in it. Proxy headers are applied outside this app, for both.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.ingest.endpoint import WEBHOOK_PATH_PREFIX, WebhookEndpoint
from service.api.middleware import (
    REQUEST_ID_HEADER,
    BodyTooLarge,
    RequestLog,
    declared_length,
    json_response_messages,
    limited_receive,
    start_request,
)


class WebhookFront:
    """Dispatches ``/v1/webhooks/<source>`` (one path segment) to ``endpoint``, anything else
    (other paths, lifespan) to ``app``."""

    def __init__(self, app: ASGIApp, endpoint: WebhookEndpoint, max_body_bytes: int) -> None:
        self.app = app
        self.endpoint = endpoint
        self.max_body_bytes = max_body_bytes
        self.request_log = RequestLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(WEBHOOK_PATH_PREFIX):
                name = path[len(WEBHOOK_PATH_PREFIX) :]
                if name and "/" not in name:
                    await self.webhook(scope, receive, send, name)
                    return
        await self.app(scope, receive, send)

    async def webhook(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """One webhook request of source ``name``, from request id to log line."""
        start = time.perf_counter()
        request_id, fields = start_request(scope)
        status = 500
        try:
            endpoint = self.endpoint
            declared = declared_length(scope)
            if declared is None:  # chunked: counted while it streams
                try:
                    answer = await endpoint.handle(
                        scope, limited_receive(receive, self.max_body_bytes), name, fields
                    )
                except BodyTooLarge:
                    answer = endpoint.too_large(name, fields)
            elif declared > self.max_body_bytes:
                answer = endpoint.too_large(name, fields)
            else:
                # The HTTP server never delivers more than the declared length.
                answer = await endpoint.handle(scope, receive, name, fields)
            if answer is None:
                return  # the client is gone
            status = answer.status
            head, body = json_response_messages(
                status, answer.body, (*answer.headers, (REQUEST_ID_HEADER, request_id.encode()))
            )
            await send(head)
            await send(body)
        finally:
            self.request_log.write(scope, fields, status, start)
