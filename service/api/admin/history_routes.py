"""The admin API's history (issue 13): overview, events, payments, deliveries and resends
(secret rotation and test events: :mod:`service.api.admin.subscriber_routes`). Every list is a
page ``{"items", "next_cursor"}`` (``limit`` 1..500, ``cursor``); times are epoch ms. Reads
and writes go through :mod:`service.store.history` (and
:class:`service.store.deliveries.DeliveryAdmin` for resends, the one replay path).

Errors beyond the admin API's own: 400 ``invalid_query`` / ``invalid_body``; 404
``unknown_event``, ``unknown_payment``, ``unknown_delivery``, ``unknown_subscriber``; 409
``delivery_pending`` (a resend of a delivery still queued or being sent); 410 ``body_expired``.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from service.api.admin import models as m
from service.api.admin.openapi import ApiRoute, Spec, body_of, query_of, reply
from service.api.admin.routes import AdminResources
from service.clock import now_ms
from service.domain.events import transition_id
from service.errors import BadRequest, Conflict, Gone, NotFound
from service.store.deliveries import RESENDABLE
from service.store.history import (
    BadCursor,
    Delivery,
    Event,
    HistoryStore,
    Page,
    Run,
    decode_cursor,
    encode_cursor,
    events_of,
    overview_counts,
    subscriber_health,
    walk_index,
)

log = structlog.get_logger("kartahook.admin")

RATE_WINDOW_MS = 5 * 60_000
TEST_EVENT_TYPE = "webhook.test"


def _history(request: Request) -> HistoryStore:
    return HistoryStore.from_settings(request.state.redis, request.state.settings)


def _page(page: Page) -> dict[str, Any]:
    return {"items": [item.to_dict() for item in page.items], "next_cursor": page.next_cursor}


def _bad_cursor() -> BadRequest:
    return BadRequest("invalid_query", "cursor: not one this API gave")


# ---- overview ----------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    res = AdminResources(request)
    history = _history(request)
    now = now_ms()
    counts = await overview_counts(res.redis, res.settings.queue_name)
    subscribers = await res.subscribers.all()
    health = await subscriber_health(res.redis, [s.id for s in subscribers], now)
    for sub, row in zip(subscribers, health, strict=True):
        row["enabled"] = sub.enabled
    since = now - RATE_WINDOW_MS
    events = await history.rates(now)
    delivered = failed = 0
    for entries in (await history.attempt_log([s.id for s in subscribers])).values():
        for entry in entries:
            if int(entry.get("at_ms") or 0) < since:
                continue
            if entry.get("outcome") == "delivered":
                delivered += 1
            else:
                failed += 1
    rates = {"events_5m": events, "deliveries_5m": {"delivered": delivered, "failed": failed}}
    return reply(m.Overview, {**counts, "rates": rates, "subscribers": health})


# ---- events ------------------------------------------------------------------------------------


def _event_matches(event: Event, query: m.EventsQuery) -> bool:
    if query.source is not None and event.source != query.source:
        return False
    if query.event_id is not None and event.event_id != query.event_id:
        return False
    if query.since is not None and event.received_ms < query.since:
        return False
    return query.until is None or event.received_ms <= query.until


async def list_events(request: Request) -> Response:
    query = query_of(request, m.EventsQuery)
    history = _history(request)

    async def expand(payment_ids: list[str]) -> list[list[Any]]:
        all_runs = await history.runs_of(payment_ids)
        return [
            [e for e in events_of(pid, runs) if _event_matches(e, query)]
            for pid, runs in zip(payment_ids, all_runs, strict=True)
        ]

    try:
        if query.payment_id is not None:
            page = await _one_payment(query.payment_id, expand, query.limit, query.cursor)
        elif query.source is not None and query.event_id is not None and query.cursor is None:
            # While its job is queued the job names the payment; once it ran, the walk below
            # finds the event among the newest payments (or pass payment_id).
            payment_id = await history.event_payment(query.source, query.event_id)
            items = [] if payment_id is None else (await expand([payment_id]))[0]
            if items:
                page = Page(items[: query.limit], None)
            else:
                page = await walk_index(history, expand, query.limit, None)
        else:
            page = await walk_index(history, expand, query.limit, query.cursor)
    except BadCursor:
        raise _bad_cursor() from None
    return reply(m.EventPage, _page(page))


async def _one_payment(payment_id: str, expand: Any, limit: int, cursor: str | None) -> Page:
    """A page of the items of one payment (cursor: (0, payment id, items shown))."""
    skip = 0
    if cursor is not None:
        _, pid, skip = decode_cursor(cursor, (int, str, int))
        if pid != payment_id:
            raise BadCursor("cursor of another payment")
    items = (await expand([payment_id]))[0]
    page = items[skip : skip + limit]
    more = skip + limit < len(items)
    return Page(page, encode_cursor([0, payment_id, skip + limit]) if more else None)


async def show_event(request: Request) -> Response:
    source, event_id = request.path_params["source"], request.path_params["event_id"]
    query = query_of(request, m.EventQuery)
    history = _history(request)
    # The archive is kept by payment: the payment given, else the one the queued job names.
    payment_id = query.payment_id or await history.event_payment(source, event_id)
    if payment_id is None:
        raise NotFound(
            "unknown_event",
            f"no event {event_id!r} of source {source!r} is queued; once processed, an event is "
            "found by its payment: pass ?payment_id=",
        )
    raw = await history.raw_event(source, event_id, payment_id)
    found = events_of(payment_id, await history.runs(payment_id))
    event = next((e for e in found if (e.source, e.event_id) == (source, event_id)), None)
    if event is None and raw is None:
        raise NotFound(
            "unknown_event",
            f"no event {event_id!r} of source {source!r} and payment {payment_id!r} is retained",
        )
    received = (
        event.received_ms if event is not None else raw.get("received_at_ms") if raw else None
    )
    body = None
    headers = None
    if raw is not None:
        body = raw.get("body")
        if body is None and raw.get("body_b64") is not None:
            body = str(raw["body_b64"])
        headers = {str(k): str(v) for k, v in (raw.get("headers") or {}).items()}
    return reply(
        m.EventDetail,
        {
            "source": source,
            "event_id": event_id,
            "payment_id": payment_id,
            "received_ms": int(received) if isinstance(received, int | float) else None,
            "status": event.status if event is not None else "queued",
            "headers": headers,
            "body": body,
        },
    )


# ---- payments ----------------------------------------------------------------------------------


def _timeline(
    payment_id: str,
    runs: list[Run],
    deliveries: list[Delivery],
    logs: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    order = {"hint": 0, "fetch": 1, "transition": 2, "delivery": 3, "attempt": 4}
    entries: list[dict[str, Any]] = []
    for run in runs:
        if not run.is_convergence:
            entries.append(
                {
                    "at_ms": run.received_ms,
                    "kind": "hint",
                    "source": run.source,
                    "event_id": run.event_id,
                }
            )
        if run.outcome != "coalesced":
            entries.append(
                {
                    "at_ms": run.at_ms,
                    "kind": "fetch",
                    "status": run.fetched,
                    "outcome": run.outcome,
                    "source": run.source,
                }
            )
        for status in run.emitted:
            entries.append(
                {
                    "at_ms": run.at_ms,
                    "kind": "transition",
                    "status": status,
                    "webhook_id": transition_id(payment_id, status),
                    "type": f"payment.{status}",
                }
            )
    for delivery in deliveries:
        entries.append(
            {
                "at_ms": delivery.created_ms or 0,
                "kind": "delivery",
                "subscriber": delivery.subscriber,
                "webhook_id": delivery.webhook_id,
                "state": delivery.state,
            }
        )
    for sub, log_entries in logs.items():
        for entry in log_entries:
            if entry.get("payment_id") != payment_id:
                continue
            code = entry.get("status")
            entries.append(
                {
                    "at_ms": int(entry.get("at_ms") or 0),
                    "kind": "attempt",
                    "subscriber": sub,
                    "webhook_id": entry.get("webhook_id"),
                    "status_code": code if isinstance(code, int) else None,
                    "error": entry.get("error"),
                    "outcome": entry.get("outcome"),
                }
            )
    entries.sort(key=lambda e: (e["at_ms"], order[e["kind"]]))
    return entries


async def show_payment(request: Request) -> Response:
    payment_id = request.path_params["payment_id"]
    res = AdminResources(request)
    history = _history(request)
    state = await history.payment_state(payment_id)
    runs = await history.runs(payment_id)
    subscriber_ids = [s.id for s in await res.subscribers.all()]
    deliveries = (await history.deliveries_of_payments([payment_id], subscriber_ids))[payment_id]
    if state["state"] is None and not runs and not deliveries:
        raise NotFound("unknown_payment", f"nothing is known of payment {payment_id!r}")
    logs = await history.attempt_log(sorted({d.subscriber for d in deliveries}))
    return reply(
        m.PaymentDetail,
        {
            "payment_id": payment_id,
            "state": state["state"],
            "terminal": state["terminal"],
            "convergence": {"next_check_ms": state["next_check_ms"], "stuck": state["stuck"]},
            "timeline": _timeline(payment_id, runs, deliveries, logs),
            "deliveries": [d.to_dict() for d in deliveries],
        },
    )


# ---- deliveries --------------------------------------------------------------------------------


async def list_deliveries(request: Request) -> Response:
    query = query_of(request, m.DeliveriesQuery)
    res = AdminResources(request)
    history = _history(request)
    if query.subscriber is not None:
        await res.subscriber(query.subscriber)
        subscriber_ids = [query.subscriber]
    else:
        subscriber_ids = [s.id for s in await res.subscribers.all()]

    def keep(d: Delivery) -> bool:
        return query.state is None or d.state == query.state

    async def expand(payment_ids: list[str]) -> list[list[Any]]:
        found = await history.deliveries_of_payments(payment_ids, subscriber_ids)
        return [[d for d in reversed(found[pid]) if keep(d)] for pid in payment_ids]

    try:
        if query.payment_id is not None:
            page = await _one_payment(query.payment_id, expand, query.limit, query.cursor)
        elif query.state == "dead":
            page = await _dead_page(history, query)
        else:
            page = await walk_index(history, expand, query.limit, query.cursor)
    except BadCursor:
        raise _bad_cursor() from None
    return reply(m.DeliveryPage, _page(page))


async def _dead_page(history: HistoryStore, query: m.DeliveriesQuery) -> Page:
    """Dead deliveries newest first, from the dead-letter sets (cursor: (dead ms, member, 0))."""
    after = None
    if query.cursor is not None:
        ms, member, _ = decode_cursor(query.cursor, (int, str, int))
        after = (ms, member)
    refs = await history.dead_page(query.subscriber, after, query.limit + 1)
    more = len(refs) > query.limit
    refs = refs[: query.limit]
    found = await history.deliveries((sub, tid) for sub, tid, _ in refs)
    cursor = None
    if more and refs:
        sub, tid, ms = refs[-1]
        cursor = encode_cursor([ms, tid if query.subscriber else f"{sub}/{tid}", 0])
    return Page(found, cursor)


def _unknown_delivery(subscriber_id: str, webhook_id: str) -> NotFound:
    return NotFound("unknown_delivery", f"no delivery {webhook_id!r} to {subscriber_id!r}")


async def show_delivery(request: Request) -> Response:
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    history = _history(request)
    delivery = await history.delivery(sub, webhook_id)
    if delivery is None:
        raise _unknown_delivery(sub, webhook_id)
    log_entries = (await history.attempt_log([sub]))[sub]
    attempts = [
        {
            "at_ms": int(e.get("at_ms") or 0),
            "status": e.get("status") if isinstance(e.get("status"), int) else None,
            "error": e.get("error"),
            "duration_ms": e.get("latency_ms"),
        }
        for e in reversed(log_entries)
        if e.get("webhook_id") == webhook_id
    ]
    return reply(m.DeliveryDetail, {**delivery.to_dict(), "attempts_log": attempts})


async def resend_delivery(request: Request) -> Response:
    sub, webhook_id = request.path_params["subscriber_id"], request.path_params["webhook_id"]
    res = AdminResources(request)
    # A finished delivery is a record of its payment: its resend needs the payment id.
    known = await _history(request).delivery(sub, webhook_id)
    result, job_id = await res.deliveries.resend(
        sub, webhook_id, now_ms(), payment_id=known.payment_id if known else None
    )
    if result == "missing":
        raise _unknown_delivery(sub, webhook_id)
    if result == "no_body":
        raise Gone("body_expired", "its body is past retention: it cannot be sent again")
    if result != "ok":
        raise Conflict("delivery_pending", "it is still queued or being sent")
    log.info("delivery_resent", subscriber=sub, webhook_id=webhook_id)
    return reply(m.ResendOut, {"job_id": job_id or None, "webhook_id": webhook_id}, 202)


async def resend_since(request: Request) -> Response:
    """Every delivery of the subscriber created since then, again, in order per payment."""
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    body = await body_of(request, m.BulkResendIn)
    if body.since is None:
        raise BadRequest("invalid_body", "since: give a time (0 for everything retained)")
    since = body.since
    history = _history(request)
    queued = 0
    after: str | None = None
    now = now_ms()
    # Transitions come at most a convergence horizon after a payment is first seen.
    oldest = since - int(res.settings.converge_horizon_s * 1000)
    while True:
        chunk = await history.page_payments(after, 100)
        if not chunk:
            break
        runs = await history.runs_of(chunk)
        by_payment = await history.deliveries_of_payments(chunk, [found.id])
        for pid in chunk:
            for d in by_payment[pid]:  # oldest transition first: the line's order
                if d.state in RESENDABLE and (d.created_ms or 0) >= since:
                    result, _ = await res.deliveries.resend(
                        found.id, d.webhook_id, now, payment_id=d.payment_id
                    )
                    queued += result == "ok"
            after = pid
        first_seen = [r[0].received_ms for r in runs if r]
        if len(chunk) < 100 or (first_seen and max(first_seen) < oldest):
            break
    log.info("deliveries_resent", subscriber=found.id, since=since, count=queued)
    return reply(m.Queued, {"queued": queued}, 202)


def history_routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/overview",
            "GET",
            overview,
            Spec("Backlog, rates, subscriber health", m.Overview, tag="history"),
        ),
        ApiRoute(
            "/events",
            "GET",
            list_events,
            Spec("Inbound events, newest first", m.EventPage, query=m.EventsQuery, tag="history"),
        ),
        ApiRoute(
            "/events/{source}/{event_id}",
            "GET",
            show_event,
            Spec(
                "One event, with its archived headers and body",
                m.EventDetail,
                query=m.EventQuery,
                errors=(404,),
                tag="history",
            ),
        ),
        ApiRoute(
            "/payments/{payment_id}",
            "GET",
            show_payment,
            Spec(
                "A payment: state, convergence, timeline, deliveries",
                m.PaymentDetail,
                errors=(404,),
                tag="history",
            ),
        ),
        ApiRoute(
            "/deliveries",
            "GET",
            list_deliveries,
            Spec(
                "Deliveries, newest first",
                m.DeliveryPage,
                query=m.DeliveriesQuery,
                errors=(404,),
                tag="history",
            ),
        ),
        ApiRoute(
            "/deliveries/{subscriber_id}/{webhook_id}",
            "GET",
            show_delivery,
            Spec(
                "One delivery and its retained attempts",
                m.DeliveryDetail,
                errors=(404,),
                tag="history",
            ),
        ),
        ApiRoute(
            "/deliveries/{subscriber_id}/{webhook_id}/resend",
            "POST",
            resend_delivery,
            Spec(
                "Send a delivery again, same webhook-id",
                m.ResendOut,
                202,
                errors=(404, 409, 410),
                tag="history",
            ),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}/resend",
            "POST",
            resend_since,
            Spec(
                "Send again every delivery of the subscriber created since a time",
                m.Queued,
                202,
                body=m.BulkResendIn,
                errors=(404,),
                tag="subscribers",
            ),
        ),
    ]
