"""The admin API under ``/admin``: subscribers, attempt logs, delivery dead letters and replay,
stuck payments.

Every route needs ``Authorization: Bearer <KARTAHOOK_ADMIN_TOKEN>``. Resources come from the app's
lifespan state (``redis``, ``settings``). Errors are JSON ``{"error": <code>, "detail": <text>}``:

- 401 ``missing_token``; 403 ``invalid_token`` or ``admin_disabled`` (no token configured);
- 400 ``invalid_json`` / ``invalid_query``; 404 ``unknown_subscriber`` / ``unknown_dead_letter``;
- 409 ``subscriber_exists``; 422 ``invalid_url``, ``host_not_allowed``, ``invalid_subscriber``,
  ``control_characters`` (in the URL or a header), ``forbidden_target`` (the URL reaches
  kartahook's own Redis, admin listener or worker metrics port, whatever the allowlist says).
- 503 ``redis_unavailable`` (with ``Retry-After``) when Redis does not answer in time.

Handlers (and the token check) raise :class:`service.errors.ApiError`; one exception handler,
:func:`api_error_response`, renders them: the app registers it (``exception_handlers``) and mounts
the routes with ``Mount("/admin", app=admin_app())``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.admin import models as m
from service.api.admin.openapi import ApiRoute, Spec, openapi_route, query_of
from service.clock import now_ms
from service.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    SubscriberError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from service.metrics import ADMIN_REFUSALS
from service.settings import Settings
from service.store.converge import StuckList
from service.store.deliveries import DeliveryAdmin
from service.store.subscribers import (
    Subscriber,
    SubscriberStore,
    build_subscriber,
    check_subscriber,
    forbidden_targets,
)
from service.targets import check_target_resolved

log = structlog.get_logger("kartahook.admin")

# Fields an operator may change with PATCH (id is the key; origin and times are ours).
MUTABLE_FIELDS = frozenset(
    {"url", "secret", "events", "channels", "sources", "enabled", "concurrency", "headers"}
)


async def api_error_response(_: Request, exc: Exception) -> Response:
    """The one exception handler of the admin API: an :class:`ApiError` as its JSON body."""
    assert isinstance(exc, ApiError)
    ADMIN_REFUSALS.labels(str(exc.status_code), exc.code).inc()
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


async def redis_error_response(request: Request, exc: Exception) -> Response:
    """A Redis error in a handler (Redis down, failing over, or slower than
    ``admin_redis_timeout_s``): 503 ``redis_unavailable`` with ``Retry-After``, one log line,
    counted as a refusal. Never a 500: the request was fine, the store was not there."""
    settings: Settings = request.state.settings
    log.warning(
        "admin_redis_unavailable",
        path=request.url.path,
        method=request.method,
        error=type(exc).__name__,
    )
    retry = {"Retry-After": str(settings.retry_after_s)}
    unavailable = Unavailable("redis_unavailable", "Redis did not answer; try again", retry)
    return await api_error_response(request, unavailable)


class AdminAuth:
    """Pure ASGI middleware: the Bearer admin token, compared in constant time; a refusal is
    raised as an :class:`ApiError` for :func:`api_error_response`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            settings: Settings = scope["state"]["settings"]
            try:
                self.check(settings, dict(scope["headers"]).get(b"authorization"))
            except ApiError as exc:
                log.warning("admin_refused", path=scope.get("path"), reason=exc.status_code)
                raise
        await self.app(scope, receive, send)

    @staticmethod
    def check(settings: Settings, header: bytes | None) -> None:
        """Raise the refusal of a request with this ``Authorization`` header, if any."""
        if settings.admin_token is None or not settings.admin_token.get_secret_value():
            raise Forbidden("admin_disabled", "the admin API is off: KARTAHOOK_ADMIN_TOKEN unset")
        if not header:
            raise Unauthorized(
                "missing_token",
                "send Authorization: Bearer <admin token>",
                headers={"www-authenticate": "Bearer"},
            )
        scheme, _, token = header.decode("latin-1").partition(" ")
        expected = settings.admin_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise Forbidden("invalid_token", "the admin token is wrong")


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


def since_param(value: Any, error: type[ApiError] = BadRequest) -> int | None:
    """:func:`parse_since`, its refusal raised as ``error`` (``invalid_query``)."""
    try:
        return parse_since(value)
    except ValueError as exc:
        raise error("invalid_query", str(exc)) from None


def limit_param(request: Request, default: int = 100) -> int:
    """The ``limit`` query parameter (1 to 10000), or :class:`BadRequest` ``invalid_query``."""
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise BadRequest("invalid_query", "limit must be an integer from 1 to 10000")
    return int(raw)


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or :class:`BadRequest` ``invalid_json``."""
    body = await request.body()
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_json", "the body must be a JSON object")
    return data


def unknown_subscriber(subscriber_id: object) -> NotFound:
    return NotFound("unknown_subscriber", f"no subscriber {subscriber_id!r}")


def unknown_dead_letter(webhook_id: str, subscriber_id: str) -> NotFound:
    return NotFound("unknown_dead_letter", f"no dead letter {webhook_id!r} of {subscriber_id!r}")


async def build(data: dict[str, Any], res: AdminResources) -> Subscriber:
    """:func:`build_subscriber` with kartahook's own listeners refused (the URL's host resolved
    now too), its refusal raised as :class:`Unprocessable` with its code."""
    forbidden = await forbidden_targets(res.settings, res.redis)
    try:
        subscriber = build_subscriber(data, res.settings.subscriber_allowlist, forbidden)
        await check_target_resolved(subscriber.url, forbidden)
    except SubscriberError as exc:
        raise Unprocessable(exc.code, exc.message) from None
    return subscriber


async def check_sendable(subscriber: Subscriber, res: AdminResources) -> None:
    """Before enabling: the stored subscriber would be refused at send time as it is (control
    characters, outside the allowlist, one of kartahook's own listeners): :class:`Unprocessable`."""
    forbidden = await forbidden_targets(res.settings, res.redis)
    try:
        check_subscriber(subscriber, res.settings.subscriber_allowlist, forbidden)
        await check_target_resolved(subscriber.url, forbidden)
    except SubscriberError as exc:
        raise Unprocessable(exc.code, exc.message) from None


class AdminResources:
    """What a handler needs, from the lifespan state."""

    def __init__(self, request: Request) -> None:
        self.settings: Settings = request.state.settings
        self.redis = request.state.redis
        self.subscribers = SubscriberStore(request.state.redis)
        self.deliveries = DeliveryAdmin(request.state.redis, self.settings.queue_name)

    async def subscriber(self, subscriber_id: str) -> Subscriber:
        """The subscriber, or :class:`NotFound` ``unknown_subscriber``."""
        found = await self.subscribers.get(subscriber_id)
        if found is None:
            raise unknown_subscriber(subscriber_id)
        return found


async def list_subscribers(request: Request) -> Response:
    res = AdminResources(request)
    return JSONResponse({"subscribers": [s.public() for s in await res.subscribers.all()]})


async def create_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    data = await json_object(request)
    if "previous_secrets" in data:  # only a rotation keeps previous secrets
        raise Unprocessable("invalid_subscriber", "previous_secrets: not accepted")
    subscriber = await build({**data, "origin": "api"}, res)
    if not await res.subscribers.add(subscriber):
        raise Conflict("subscriber_exists", f"subscriber {subscriber.id!r} already exists")
    log.info("subscriber_added", subscriber=subscriber.id, url=subscriber.url)
    # The secret is shown once, on creation (it may have been generated).
    return JSONResponse({**subscriber.public(), "secret": subscriber.secret}, status_code=201)


async def show_subscriber(request: Request) -> Response:
    found = await AdminResources(request).subscriber(request.path_params["subscriber_id"])
    return JSONResponse(found.public())


async def update_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    data = await json_object(request)
    unknown = set(data) - MUTABLE_FIELDS
    if unknown:
        raise Unprocessable("invalid_subscriber", f"fields not changeable: {sorted(unknown)}")
    updated = await build({**found.model_dump(), **data}, res)
    if updated.enabled:
        updated.disabled_reason = None
    await res.subscribers.put(updated)
    log.info("subscriber_updated", subscriber=updated.id, fields=sorted(data))
    if updated.enabled and not found.enabled:
        await res.deliveries.wake(
            updated.id, updated.cap(res.settings.delivery_concurrency), now_ms()
        )
    return JSONResponse(updated.public())


async def remove_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    if not await res.subscribers.remove(subscriber_id):
        raise unknown_subscriber(subscriber_id)
    # Parked deliveries run once more, find no subscriber, and are dropped (logged, counted).
    await res.deliveries.wake(subscriber_id, 1_000_000, now_ms())
    log.info("subscriber_removed", subscriber=subscriber_id)
    return Response(status_code=204)


async def enable_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    await check_sendable(await res.subscriber(subscriber_id), res)
    updated = await res.subscribers.set_enabled(subscriber_id, True)
    if updated is None:
        raise unknown_subscriber(subscriber_id)
    woken = await res.deliveries.wake(
        subscriber_id, updated.cap(res.settings.delivery_concurrency), now_ms()
    )
    log.info("subscriber_enabled", subscriber=subscriber_id, woken=woken)
    return JSONResponse(updated.public())


async def disable_subscriber(request: Request) -> Response:
    res = AdminResources(request)
    subscriber_id = request.path_params["subscriber_id"]
    updated = await res.subscribers.set_enabled(subscriber_id, False, "disabled by an operator")
    if updated is None:
        raise unknown_subscriber(subscriber_id)
    log.info("subscriber_disabled", subscriber=subscriber_id)
    return JSONResponse(updated.public())


async def subscriber_attempts(request: Request) -> Response:
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    query = query_of(request, m.LimitQuery)
    return JSONResponse({"attempts": await res.deliveries.attempts(found.id, query.limit)})


async def list_dead_letters(request: Request) -> Response:
    res = AdminResources(request)
    query = query_of(request, m.DeadLettersQuery)
    subscriber_id = query.subscriber or None
    if subscriber_id is not None:
        await res.subscriber(subscriber_id)
    letters = await res.deliveries.dead_letters(subscriber_id, query.since, query.limit)
    total = await res.deliveries.dead_letter_count(subscriber_id)
    return JSONResponse({"total": total, "dead_letters": [d.to_dict() for d in letters]})


async def show_dead_letter(request: Request) -> Response:
    res = AdminResources(request)
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    letter = await res.deliveries.dead_letter(sub, webhook_id)
    if letter is None:
        raise unknown_dead_letter(webhook_id, sub)
    return JSONResponse(letter.to_dict())


async def replay_dead_letter(request: Request) -> Response:
    res = AdminResources(request)
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    result = await res.deliveries.replay(sub, webhook_id, now_ms())
    if result != "ok":
        raise unknown_dead_letter(webhook_id, sub)
    log.info("dead_letter_replayed", subscriber=sub, webhook_id=webhook_id)
    return JSONResponse({"replayed": [{"subscriber": sub, "webhook_id": webhook_id}]})


async def replay_dead_letters(request: Request) -> Response:
    """``POST /admin/dead-letters/replay`` with ``{"subscriber": …}``, ``{"since": …}`` or both."""
    res = AdminResources(request)
    data = await json_object(request)
    subscriber_id = data.get("subscriber")
    since = since_param(data.get("since"), Unprocessable)
    if subscriber_id is None and since is None:
        raise Unprocessable(
            "invalid_query", "give 'subscriber', 'since' (use 0 for everything), or both"
        )
    if subscriber_id is not None and (
        not isinstance(subscriber_id, str) or await res.subscribers.get(subscriber_id) is None
    ):
        raise unknown_subscriber(subscriber_id)
    replayed = await res.deliveries.replay_many(subscriber_id, since, now_ms())
    log.info("dead_letters_replayed", subscriber=subscriber_id, since=since, count=len(replayed))
    return JSONResponse({"replayed": replayed})


def offset_param(request: Request) -> int:
    """The ``offset`` query parameter (0 or more), or :class:`BadRequest` ``invalid_query``."""
    raw = request.query_params.get("offset", "0")
    if not raw.isdigit():
        raise BadRequest("invalid_query", "offset must be an integer from 0")
    return int(raw)


async def list_stuck_payments(request: Request) -> Response:
    """``GET /admin/payments/stuck?offset=&limit=``: payments still not terminal at the
    convergence horizon, longest stuck first; ``next_offset`` is null on the last page."""
    query = query_of(request, m.StuckQuery)
    offset, limit = query.offset, query.limit
    stuck = StuckList(request.state.redis)
    total = await stuck.count()
    page = await stuck.page(offset, limit)
    following = offset + len(page)
    return JSONResponse(
        {
            "total": total,
            "payments": [p.to_dict() for p in page],
            "next_offset": following if following < total else None,
        }
    )


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotFound("not_found", "no such admin route")


def admin_routes() -> list[ApiRoute]:
    """The subscribers, dead-letter and stuck-payment routes, with their models."""
    return [
        ApiRoute(
            "/subscribers",
            "GET",
            list_subscribers,
            Spec("List subscribers (secrets never shown)", m.SubscriberList, tag="subscribers"),
        ),
        ApiRoute(
            "/subscribers",
            "POST",
            create_subscriber,
            Spec(
                "Add a subscriber; its secret is shown once",
                m.SubscriberCreated,
                201,
                body=m.SubscriberIn,
                errors=(400, 409, 422),
                tag="subscribers",
            ),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}",
            "GET",
            show_subscriber,
            Spec("One subscriber", m.SubscriberOut, errors=(404,), tag="subscribers"),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}",
            "PATCH",
            update_subscriber,
            Spec(
                "Change a subscriber",
                m.SubscriberOut,
                body=m.SubscriberPatch,
                errors=(400, 404, 422),
                tag="subscribers",
            ),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}",
            "DELETE",
            remove_subscriber,
            Spec("Remove a subscriber", None, 204, errors=(404,), tag="subscribers"),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}/enable",
            "POST",
            enable_subscriber,
            Spec(
                "Enable a subscriber; its parked deliveries resume",
                m.SubscriberOut,
                errors=(404, 422),
                tag="subscribers",
            ),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}/disable",
            "POST",
            disable_subscriber,
            Spec("Disable a subscriber", m.SubscriberOut, errors=(404,), tag="subscribers"),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}/attempts",
            "GET",
            subscriber_attempts,
            Spec(
                "A subscriber's attempt log, newest first",
                m.AttemptsOut,
                query=m.LimitQuery,
                errors=(404,),
                tag="subscribers",
            ),
        ),
        ApiRoute(
            "/dead-letters",
            "GET",
            list_dead_letters,
            Spec(
                "Dead-lettered deliveries, oldest first",
                m.DeadLetterList,
                query=m.DeadLettersQuery,
                errors=(404,),
                tag="dead letters",
            ),
        ),
        ApiRoute(
            "/payments/stuck",
            "GET",
            list_stuck_payments,
            Spec(
                "Payments not terminal at the convergence horizon",
                m.StuckList,
                query=m.StuckQuery,
                tag="payments",
            ),
        ),
        ApiRoute(
            "/dead-letters/replay",
            "POST",
            replay_dead_letters,
            Spec(
                "Replay the dead letters of a subscriber, or since a time, or both",
                m.Replayed,
                body=m.ReplayManyIn,
                errors=(404, 422),
                tag="dead letters",
            ),
        ),
        ApiRoute(
            "/dead-letters/{subscriber_id}/{webhook_id}",
            "GET",
            show_dead_letter,
            Spec(
                "One dead letter, with its body", m.DeadLetterOut, errors=(404,), tag="dead letters"
            ),
        ),
        ApiRoute(
            "/dead-letters/{subscriber_id}/{webhook_id}/replay",
            "POST",
            replay_dead_letter,
            Spec(
                "Replay one dead letter (same webhook-id)",
                m.Replayed,
                errors=(404,),
                tag="dead letters",
            ),
        ),
    ]


def admin_app(extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The admin routes (plus ``extra_routes``) and ``/openapi.json`` (their document) behind
    the token check; mount at ``/admin`` in an app whose exception handlers render
    :class:`ApiError` with :func:`api_error_response`."""
    return AdminAuth(Router(routes=router_routes(extra_routes), default=not_found))


def router_routes(extra_routes: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """Every route of the admin router: :func:`admin_routes`, ``extra_routes`` and the
    OpenAPI document built from all of them."""
    routes: list[BaseRoute] = [*admin_routes(), *extra_routes]
    return [*routes, openapi_route(routes)]
