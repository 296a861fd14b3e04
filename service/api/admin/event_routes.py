"""Admin routes for processing's dead letters (events), under ``/admin/events``.

- ``GET  /events/dead-letters?since=&limit=``: list, oldest first;
- ``GET  /events/dead-letters/{id}``: one entry;
- ``POST /events/dead-letters/{id}/retry``: queue it again (attempt 0);
- ``POST /events/dead-letters/retry`` with ``{"since": …}`` (0 for everything).
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.api.admin.routes import json_object, limit_param, since_param
from service.errors import NotFound, Unprocessable
from service.settings import Settings
from service.store.dead_letters import EventDeadLetters

log = structlog.get_logger("kartahook.admin")


def _store(request: Request) -> EventDeadLetters:
    settings: Settings = request.state.settings
    return EventDeadLetters(request.state.redis, settings.queue_name)


def _seconds(since_ms: int | None) -> float | None:
    return None if since_ms is None else since_ms / 1000


def _unknown() -> NotFound:
    return NotFound("unknown_dead_letter", "no such event dead letter")


async def list_event_dead_letters(request: Request) -> Response:
    store = _store(request)
    since = since_param(request.query_params.get("since"))
    limit = limit_param(request)
    entries = await store.entries(limit=limit, since=_seconds(since))
    return JSONResponse({"total": await store.count(), "dead_letters": entries})


async def show_event_dead_letter(request: Request) -> Response:
    entry = await _store(request).get(request.path_params["entry_id"])
    if entry is None:
        raise _unknown()
    return JSONResponse(entry)


async def retry_event_dead_letter(request: Request) -> Response:
    entry_id = request.path_params["entry_id"]
    if not await _store(request).retry(entry_id):
        raise _unknown()
    log.info("event_dead_letter_retried", entry_id=entry_id)
    return JSONResponse({"retried": [entry_id]})


async def retry_event_dead_letters(request: Request) -> Response:
    data = await json_object(request)
    since = since_param(data.get("since"), Unprocessable)
    if since is None:
        raise Unprocessable("invalid_query", "give 'since' (use 0 for everything)")
    retried = await _store(request).retry_since(_seconds(since))
    log.info("event_dead_letters_retried", since=since, count=len(retried))
    return JSONResponse({"retried": retried})


def event_dead_letter_routes() -> list[Route]:
    return [
        Route("/events/dead-letters", list_event_dead_letters, methods=["GET"]),
        Route("/events/dead-letters/retry", retry_event_dead_letters, methods=["POST"]),
        Route("/events/dead-letters/{entry_id}", show_event_dead_letter, methods=["GET"]),
        Route("/events/dead-letters/{entry_id}/retry", retry_event_dead_letter, methods=["POST"]),
    ]
