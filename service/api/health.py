"""``/healthz`` (liveness: the process answers) and ``/readyz`` (readiness: Redis answers, and,
only when ``KARTAHOOK_BACKLOG_HIGH_WATER`` is set above 0, the backlog is below it)."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.store.events import EventStore, RedisUnavailable


async def healthz(_: Request) -> JSONResponse:
    """Liveness: no dependency is checked."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when Redis answers (and the backlog is below a configured high-water
    mark), else 503."""
    store: EventStore = request.state.event_store
    high_water: int = request.state.backlog_high_water
    try:
        backlog = await store.backlog()
    except RedisUnavailable as exc:
        structlog.contextvars.bind_contextvars(reason=str(exc))
        return JSONResponse({"status": "unavailable", "redis": "down"}, status_code=503)
    body = {"status": "ready", "redis": "up", "backlog": backlog, "high_water": high_water}
    if high_water and backlog >= high_water:
        body["status"] = "backlogged"
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
