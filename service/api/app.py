"""The ASGI applications ``kartahook serve`` serves, on two listeners.

- ``create_app(settings)``: the public listener. ``/v1/webhooks/{source}`` (ingestion, served by
  :class:`service.api.ingest.front.WebhookFront` outside Starlette), ``/healthz`` and
  ``/readyz``. Nothing else: a load balancer may expose it to the internet.
- ``create_admin_app(settings)``: the admin listener (``KARTAHOOK_ADMIN_PORT``). ``/admin/…``,
  the operator's console (``/console``, :mod:`service.api.console`), ``/metrics`` and the
  probes; keep it internal (NetworkPolicy, bind address).
- ``create_server_app(settings, admin_port)``: both in one ASGI app for one uvicorn server that
  listens on both sockets. A request goes to the admin app only when it arrived on the admin
  port (the local address of its connection, ``scope["server"]``), else to the public app. One
  lifespan, so one Redis client and one event store per process serve both listeners.

Redis client and event store are made in the lifespan and reach handlers through request state.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.admin.event_routes import event_dead_letter_routes
from service.api.admin.history_routes import history_routes
from service.api.admin.routes import admin_app, api_error_response, redis_error_response
from service.api.admin.subscriber_routes import subscriber_routes
from service.api.console import console_routes
from service.api.health import healthz, readyz
from service.api.ingest.endpoint import WebhookEndpoint
from service.api.ingest.front import WebhookFront
from service.api.ingest.sources.base import Source
from service.api.ingest.sources.config import load_sources
from service.api.metrics_route import metrics_endpoint
from service.api.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    trusted_proxy_headers,
)
from service.errors import ApiError
from service.logging import configure_logging
from service.metrics import REDIS_SETTING_LOW
from service.settings import Settings
from service.store.client import redis_client
from service.store.events import EventStore
from service.store.redis_config import check_memory_settings

log = structlog.get_logger("kartahook.app")

# Net allocations of container objects between two young-generation collections.
YOUNG_GC_THRESHOLD = 10_000


def _redis(settings: Settings, timeout_s: float, max_connections: int) -> aioredis.Redis:
    """A Redis client from ``service.store.client`` (plain or Sentinel URL), every socket
    operation bounded by ``timeout_s``."""
    if not settings.redis_url:
        raise RuntimeError("KARTAHOOK_REDIS_URL is not set")
    return redis_client(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=max_connections,
    )


def ingestion_redis(settings: Settings) -> aioredis.Redis:
    """The ingestion's Redis client: every call bounded by ``redis_timeout_s``."""
    return _redis(settings, settings.redis_timeout_s, 64)


def operator_redis(settings: Settings) -> aioredis.Redis:
    """The Redis client of the admin API, the console and ``/metrics``: their reads scan and
    page through history, so each call may take ``admin_redis_timeout_s``, not ingestion's
    write deadline; and a pool of its own, so a slow admin read never holds a connection a
    webhook needs."""
    return _redis(settings, settings.admin_redis_timeout_s, 16)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _lifespan(
    settings: Settings, sources: Mapping[str, Source]
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """The lifespan that makes the Redis client and the event store the handlers share."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        client = ingestion_redis(settings)
        store = EventStore.from_settings(client, settings)
        operator = operator_redis(settings)
        resources = AsyncExitStack()  # what sources hold while the app runs (PayPal's client)
        for source in sources.values():
            await source.start(resources)
        # Once per process: a warning when Redis keeps events in more memory than it should.
        await check_memory_settings(client, REDIS_SETTING_LOW)
        log.info("service starting", sources=sorted(sources))
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall the loop for milliseconds (p99).
        gc.collect()
        gc.freeze()
        # Each request allocates and frees a few dozen objects; at the default threshold (700)
        # a young collection ran every ~40 requests and traversed every request in flight
        # (~4% of the CPU time under load). Few objects outlive a request, so collections
        # this rare stay short.
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD)
        try:
            yield {
                "event_store": store,
                "redis": operator,  # the admin API's and /metrics' (not ingestion's)
                "settings": settings,
                "backlog_high_water": settings.backlog_high_water,
                # For the HTTP protocol's own answers (431): metric labels of known sources.
                "webhook_sources": frozenset(sources),
            }
        finally:
            gc.set_threshold(*thresholds)  # the process may go on (an app served in tests)
            await resources.aclose()
            await store.close()
            await client.aclose()
            await operator.aclose()

    return lifespan


def _probe_routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


def _starlette(
    settings: Settings, routes: list[BaseRoute], sources: Mapping[str, Source] | None
) -> Starlette:
    """A Starlette app with the service's middleware; with a lifespan when ``sources`` is given
    (an app served alone), without one when another app's lifespan provides the state."""
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers={
            HTTPException: _http_error,
            ApiError: api_error_response,
            RedisError: redis_error_response,
        },
        lifespan=None if sources is None else _lifespan(settings, sources),
    )


def create_app(settings: Settings, sources: Mapping[str, Source] | None = None) -> ASGIApp:
    """The public listener's ASGI app: webhooks and probes only. ``sources`` defaults to those
    of ``settings.sources_file``."""
    if sources is None:
        sources = load_sources(settings.sources_file)
    webhooks = WebhookEndpoint(sources, settings.retry_after_s)
    app = _starlette(settings, _probe_routes(), webhooks.sources)
    front = WebhookFront(app, webhooks, settings.max_body_bytes)
    return trusted_proxy_headers(front, settings.trusted_proxies)


def admin_extra_routes() -> list[BaseRoute]:
    """The admin routes beyond ``service.api.admin.routes``' own: event dead letters, history,
    secret rotation and test events."""
    return [*event_dead_letter_routes(), *history_routes(), *subscriber_routes()]


def create_admin_app(settings: Settings, *, lifespan: bool = True) -> ASGIApp:
    """The admin listener's ASGI app: ``/admin/…`` (Bearer ``KARTAHOOK_ADMIN_TOKEN``), the
    console (``/console``; its page signs in with that token), ``/metrics`` and the probes.
    With ``lifespan=False`` it relies on the state of the app it is served beside
    (:func:`create_server_app`)."""
    routes = [
        *_probe_routes(),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Mount("/admin", app=admin_app(admin_extra_routes())),
        *console_routes(),
    ]
    app = _starlette(settings, routes, {} if lifespan else None)
    return trusted_proxy_headers(app, settings.trusted_proxies)


class ListenerRouter:
    """One ASGI app for a server listening on two sockets: requests that arrived on
    ``admin_port`` go to ``admin``, every other request and the lifespan go to ``public``.

    The choice rests on the connection's local address (``scope["server"]``, set by uvicorn
    from the socket), never on a header a client could send. An unknown local address is
    treated as public, so the admin routes are never reachable by mistake.
    """

    def __init__(self, public: ASGIApp, admin: ASGIApp, admin_port: int) -> None:
        self.public = public
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server")
            if server is not None and server[1] == self.admin_port:
                await self.admin(scope, receive, send)
                return
        await self.public(scope, receive, send)


def create_server_app(
    settings: Settings, admin_port: int, sources: Mapping[str, Source] | None = None
) -> ASGIApp:
    """What ``kartahook serve`` serves: the public app, and the admin app for requests that
    arrive on ``admin_port``, sharing the public app's lifespan (one Redis client)."""
    public = create_app(settings, sources)
    return ListenerRouter(public, create_admin_app(settings, lifespan=False), admin_port)


def create_app_from_env() -> ASGIApp:
    """uvicorn factory (``service.api.app:create_app_from_env``): settings from the environment;
    both listeners, the admin one on ``KARTAHOOK_ADMIN_PORT``."""
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_server_app(settings, settings.admin_port)
