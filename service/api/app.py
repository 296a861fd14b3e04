"""The ASGI application: ``create_app(settings)`` builds it; ``kartahook serve`` serves it.

``/v1/webhooks/{source}`` (ingestion) is served by :class:`service.api.ingest.front.WebhookFront`
outside Starlette; ``/healthz``, ``/readyz``, ``/metrics`` and ``/admin`` are Starlette routes.
Redis client and event store are made in the lifespan and reach handlers through request state.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from service.api.admin.event_routes import event_dead_letter_routes
from service.api.admin.routes import admin_app
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
from service.logging import configure_logging
from service.settings import Settings
from service.store.events import EventStore

log = structlog.get_logger("kartahook.app")

# Net allocations of container objects between two young-generation collections.
YOUNG_GC_THRESHOLD = 10_000


def redis_client(settings: Settings) -> aioredis.Redis:
    """The ingestion's Redis client: every socket operation bounded by ``redis_timeout_s``."""
    if not settings.redis_url:
        raise RuntimeError("KARTAHOOK_REDIS_URL is not set")
    client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        max_connections=64,
    )
    return client


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings, sources: Mapping[str, Source] | None = None) -> ASGIApp:
    """The service's ASGI app. ``sources`` defaults to those of ``settings.sources_file``."""
    if sources is None:
        sources = load_sources(settings.sources_file)
    webhooks = WebhookEndpoint(sources, settings.retry_after_s)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        client = redis_client(settings)
        store = EventStore.from_settings(client, settings)
        log.info("service starting", sources=sorted(webhooks.sources))
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
                "redis": client,
                "settings": settings,
                "backlog_high_water": settings.backlog_high_water,
                # For the HTTP protocol's own answers (431): metric labels of known sources.
                "webhook_sources": frozenset(webhooks.sources),
            }
        finally:
            gc.set_threshold(*thresholds)  # the process may go on (an app served in tests)
            await store.close()
            await client.aclose()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Mount("/admin", app=admin_app(event_dead_letter_routes())),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    front = WebhookFront(app, webhooks, settings.max_body_bytes)
    return trusted_proxy_headers(front, settings.trusted_proxies)


def create_app_from_env() -> ASGIApp:
    """uvicorn factory (``service.api.app:create_app_from_env``): settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
