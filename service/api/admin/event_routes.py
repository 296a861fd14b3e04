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

from service.api.admin import models as m
from service.api.admin.openapi import ApiRoute, Spec, query_of
from service.api.admin.routes import json_object, since_param
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
    query = query_of(request, m.EventDeadLettersQuery)
    entries = await store.entries(limit=query.limit, since=_seconds(query.since))
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


def event_dead_letter_routes() -> list[ApiRoute]:
    tag = "event dead letters"
    return [
        ApiRoute(
            "/events/dead-letters",
            "GET",
            list_event_dead_letters,
            Spec(
                "Events processing gave up on, oldest first",
                m.EventDeadLetterList,
                query=m.EventDeadLettersQuery,
                tag=tag,
            ),
        ),
        ApiRoute(
            "/events/dead-letters/retry",
            "POST",
            retry_event_dead_letters,
            Spec(
                "Queue again every event dead letter since a time (0: all)",
                m.Retried,
                body=m.SinceIn,
                errors=(422,),
                tag=tag,
            ),
        ),
        ApiRoute(
            "/events/dead-letters/{entry_id}",
            "GET",
            show_event_dead_letter,
            Spec("One event dead letter", m.EventDeadLetterOut, errors=(404,), tag=tag),
        ),
        ApiRoute(
            "/events/dead-letters/{entry_id}/retry",
            "POST",
            retry_event_dead_letter,
            Spec("Queue one event dead letter again", m.Retried, errors=(404,), tag=tag),
        ),
    ]
