"""The ASGI application: ``create_app(settings)`` builds it; ``kartahook serve`` serves it.

Routes: ``/v1/webhooks/{source}`` (ingestion), ``/healthz``, ``/readyz``, ``/metrics``. Redis
client and event store are made in the lifespan and reach handlers through request state.
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

from service.admin import admin_app
from service.admin_events import event_dead_letter_routes
from service.enqueue import EventStore
from service.health import healthz, readyz
from service.ingest import WEBHOOK_PATH_PREFIX, WebhookEndpoint
from service.logging import configure_logging
from service.metrics_state import metrics_endpoint
from service.middleware import (
    BodySizeLimitMiddleware,
    FastPathMiddleware,
    RequestContextMiddleware,
    trusted_proxy_headers,
)
from service.settings import Settings
from service.sources.base import Source
from service.sources_config import load_sources

log = structlog.get_logger("kartahook.app")


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


def create_app(settings: Settings, sources: Mapping[str, Source] | None = None) -> Starlette:
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
        try:
            yield {
                "event_store": store,
                "redis": client,
                "settings": settings,
                "backlog_high_water": settings.backlog_high_water,
            }
        finally:
            await store.close()
            await client.aclose()

    routes: list[BaseRoute] = [
        Route("/v1/webhooks/{source}", webhooks, name="webhooks"),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Mount("/admin", app=admin_app(event_dead_letter_routes())),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(trusted_proxy_headers, trusted=settings.trusted_proxies),
            Middleware(RequestContextMiddleware),
            Middleware(
                BodySizeLimitMiddleware,
                max_bytes=settings.max_body_bytes,
                on_reject=webhooks.record_too_large,
            ),
            Middleware(
                FastPathMiddleware,
                prefix=WEBHOOK_PATH_PREFIX,
                endpoint=webhooks,
                param="source",
            ),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory (``service.app:create_app_from_env``): settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
