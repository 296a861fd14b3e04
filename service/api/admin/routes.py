"""The admin API under ``/admin``: subscribers, attempt logs, delivery dead letters and replay.

Every route needs ``Authorization: Bearer <KARTAHOOK_ADMIN_TOKEN>``. Resources come from the app's
lifespan state (``redis``, ``settings``). Errors are JSON ``{"error": <code>, "detail": <text>}``:

- 401 ``missing_token``; 403 ``invalid_token`` or ``admin_disabled`` (no token configured);
- 400 ``invalid_json`` / ``invalid_query``; 404 ``unknown_subscriber`` / ``unknown_dead_letter``;
- 409 ``subscriber_exists``; 422 ``invalid_url``, ``host_not_allowed``, ``invalid_subscriber``.

Mount it with ``Mount("/admin", app=admin_app())``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings
from service.store.deliveries import DeliveryAdmin
from service.store.subscribers import (
    Subscriber,
    SubscriberError,
    SubscriberStore,
    build_subscriber,
)

log = structlog.get_logger("kartahook.admin")

# Fields an operator may change with PATCH (id is the key; origin and times are ours).
MUTABLE_FIELDS = frozenset(
    {"url", "secret", "events", "channels", "sources", "enabled", "concurrency", "headers"}
)


def error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class AdminAuth:
    """Pure ASGI middleware: the Bearer admin token, compared in constant time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["state"]["settings"]
        refusal = self._refusal(settings, dict(scope["headers"]).get(b"authorization"))
        if refusal is not None:
            log.warning("admin_refused", path=scope.get("path"), reason=refusal.status_code)
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(settings: Settings, header: bytes | None) -> Response | None:
        if settings.admin_token is None or not settings.admin_token.get_secret_value():
            return error(403, "admin_disabled", "the admin API is off: KARTAHOOK_ADMIN_TOKEN unset")
        if not header:
            response = error(401, "missing_token", "send Authorization: Bearer <admin token>")
            response.headers["www-authenticate"] = "Bearer"
            return response
        scheme, _, token = header.decode("latin-1").partition(" ")
        expected = settings.admin_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            return error(403, "invalid_token", "the admin token is wrong")
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_since(value: Any) -> int | None:
    """``since`` as epoch milliseconds, from an ISO 8601 time or a number of epoch ms."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                raise ValueError("since needs a timezone (e.g. 2024-05-01T00:00:00Z)")
            return int(moment.timestamp() * 1000)
    raise ValueError("since must be an ISO 8601 time with timezone, or epoch milliseconds")


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise ValueError("limit must be an integer from 1 to 10000")
    return int(raw)


async def _json_object(request: Request) -> dict[str, Any] | JSONResponse:
    body = await request.body()
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return error(400, "invalid_json", "the body is not JSON")
    if not isinstance(data, dict):
        return error(400, "invalid_json", "the body must be a JSON object")
    return data


class AdminResources:
    """What a handler needs, from the lifespan state."""

    def __init__(self, request: Request) -> None:
        self.settings: Settings = request.state.settings
        self.subscribers = SubscriberStore(request.state.redis)
        self.deliveries = DeliveryAdmin(request.state.redis, self.settings.queue_name)

    async def subscriber(self, subscriber_id: str) -> Subscriber | JSONResponse:
        found = await self.subscribers.get(subscriber_id)
        if found is None:
            return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
        return found


def _invalid(exc: SubscriberError) -> JSONResponse:
    return error(422, exc.code, exc.message)


async def list_subscribers(request: Request) -> Response:
    res = AdminResources(request)
    return JSONResponse({"subscribers": [s.public() for s in await res.subscribers.all()]})


async def create_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    data = await _json_object(request)
    if isinstance(data, JSONResponse):
        return data
    data = {**data, "origin": "api"}
    try:
        subscriber = build_subscriber(data, res.settings.subscriber_allowlist)
    except SubscriberError as exc:
        return _invalid(exc)
    if not await res.subscribers.add(subscriber):
        return error(409, "subscriber_exists", f"subscriber {subscriber.id!r} already exists")
    log.info("subscriber_added", subscriber=subscriber.id, url=subscriber.url)
    # The secret is shown once, on creation (it may have been generated).
    return JSONResponse({**subscriber.public(), "secret": subscriber.secret}, status_code=201)


async def show_subscriber(request: Request) -> Response:
    found = await AdminResources(request).subscriber(request.path_params["subscriber_id"])
    return found if isinstance(found, JSONResponse) else JSONResponse(found.public())


async def update_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    if isinstance(found, JSONResponse):
        return found
    data = await _json_object(request)
    if isinstance(data, JSONResponse):
        return data
    unknown = set(data) - MUTABLE_FIELDS
    if unknown:
        return error(422, "invalid_subscriber", f"fields not changeable: {sorted(unknown)}")
    try:
        updated = build_subscriber(
            {**found.model_dump(), **data}, res.settings.subscriber_allowlist
        )
    except SubscriberError as exc:
        return _invalid(exc)
    await res.subscribers.put(updated)
    log.info("subscriber_updated", subscriber=updated.id, fields=sorted(data))
    if updated.enabled and not found.enabled:
        await res.deliveries.wake(
            updated.id, updated.cap(res.settings.delivery_concurrency), _now_ms()
        )
    return JSONResponse(updated.public())


async def remove_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    if not await res.subscribers.remove(subscriber_id):
        return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
    # Parked deliveries run once more, find no subscriber, and are dropped (logged, counted).
    await res.deliveries.wake(subscriber_id, 1_000_000, _now_ms())
    log.info("subscriber_removed", subscriber=subscriber_id)
    return Response(status_code=204)


async def enable_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    updated = await res.subscribers.set_enabled(subscriber_id, True)
    if updated is None:
        return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
    woken = await res.deliveries.wake(
        subscriber_id, updated.cap(res.settings.delivery_concurrency), _now_ms()
    )
    log.info("subscriber_enabled", subscriber=subscriber_id, woken=woken)
    return JSONResponse(updated.public())


async def disable_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    updated = await res.subscribers.set_enabled(subscriber_id, False, "disabled by an operator")
    if updated is None:
        return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
    log.info("subscriber_disabled", subscriber=subscriber_id)
    return JSONResponse(updated.public())


async def subscriber_attempts(request: Request) -> Response:
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    if isinstance(found, JSONResponse):
        return found
    try:
        limit = _limit(request)
    except ValueError as exc:
        return error(400, "invalid_query", str(exc))
    return JSONResponse({"attempts": await res.deliveries.attempts(found.id, limit)})


async def list_dead_letters(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.query_params.get("subscriber") or None
    try:
        since = parse_since(request.query_params.get("since"))
        limit = _limit(request)
    except ValueError as exc:
        return error(400, "invalid_query", str(exc))
    if subscriber_id is not None and await res.subscribers.get(subscriber_id) is None:
        return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
    letters = await res.deliveries.dead_letters(subscriber_id, since, limit)
    total = await res.deliveries.dead_letter_count(subscriber_id)
    return JSONResponse({"total": total, "dead_letters": [d.to_dict() for d in letters]})


async def show_dead_letter(request: Request) -> Response:
    res = AdminResources(request)
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    letter = await res.deliveries.dead_letter(sub, webhook_id)
    if letter is None:
        return error(404, "unknown_dead_letter", f"no dead letter {webhook_id!r} of {sub!r}")
    return JSONResponse(letter.to_dict())


async def replay_dead_letter(request: Request) -> Response:
    res = AdminResources(request)
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    result = await res.deliveries.replay(sub, webhook_id, _now_ms())
    if result != "ok":
        return error(404, "unknown_dead_letter", f"no dead letter {webhook_id!r} of {sub!r}")
    log.info("dead_letter_replayed", subscriber=sub, webhook_id=webhook_id)
    return JSONResponse({"replayed": [{"subscriber": sub, "webhook_id": webhook_id}]})


async def replay_dead_letters(request: Request) -> Response:
    """``POST /admin/dead-letters/replay`` with ``{"subscriber": …}``, ``{"since": …}`` or both."""
    res = AdminResources(request)
    data = await _json_object(request)
    if isinstance(data, JSONResponse):
        return data
    subscriber_id = data.get("subscriber")
    try:
        since = parse_since(data.get("since"))
    except ValueError as exc:
        return error(422, "invalid_query", str(exc))
    if subscriber_id is None and since is None:
        return error(
            422, "invalid_query", "give 'subscriber', 'since' (use 0 for everything), or both"
        )
    if subscriber_id is not None and (
        not isinstance(subscriber_id, str) or await res.subscribers.get(subscriber_id) is None
    ):
        return error(404, "unknown_subscriber", f"no subscriber {subscriber_id!r}")
    replayed = await res.deliveries.replay_many(subscriber_id, since, _now_ms())
    log.info("dead_letters_replayed", subscriber=subscriber_id, since=since, count=len(replayed))
    return JSONResponse({"replayed": replayed})


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await error(404, "not_found", "no such admin route")(scope, receive, send)


def admin_routes() -> list[Route]:
    return [
        Route("/subscribers", list_subscribers, methods=["GET"]),
        Route("/subscribers", create_subscriber, methods=["POST"]),
        Route("/subscribers/{subscriber_id}", show_subscriber, methods=["GET"]),
        Route("/subscribers/{subscriber_id}", update_subscriber, methods=["PATCH"]),
        Route("/subscribers/{subscriber_id}", remove_subscriber, methods=["DELETE"]),
        Route("/subscribers/{subscriber_id}/enable", enable_subscriber, methods=["POST"]),
        Route("/subscribers/{subscriber_id}/disable", disable_subscriber, methods=["POST"]),
        Route("/subscribers/{subscriber_id}/attempts", subscriber_attempts, methods=["GET"]),
        Route("/dead-letters", list_dead_letters, methods=["GET"]),
        Route("/dead-letters/replay", replay_dead_letters, methods=["POST"]),
        Route("/dead-letters/{subscriber_id}/{webhook_id}", show_dead_letter, methods=["GET"]),
        Route(
            "/dead-letters/{subscriber_id}/{webhook_id}/replay",
            replay_dead_letter,
            methods=["POST"],
        ),
    ]


def admin_app(extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The admin routes (plus ``extra_routes``) behind the token check; mount at ``/admin``."""
    return AdminAuth(Router(routes=[*admin_routes(), *extra_routes], default=not_found))
