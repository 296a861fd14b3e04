"""History in the admin API (issue 13), end to end: signed webhooks into the real service (both
listeners, uvicorn on 127.0.0.1), a real arq worker against the live sandbox and a real Redis,
recording subscribers; then the admin API's events, payments, deliveries, resends, rotation and
test events are checked against what really happened."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from sandbox.kartapay_api import SandboxConfig, create_app
from service.api.ingest.sources import build_sources
from service.clock import now_ms
from service.domain.events import transition_id
from service.domain.signing import decode_secret, generate_secret, sign_headers, verify
from service.errors import SignatureError
from service.kartapay.client import KartaPayClient
from service.settings import Settings
from service.store.subscribers import Subscriber, SubscriberStore
from tests.delivery_support import Recorder, always
from tests.support import completed_payments, serve_app, serve_listeners, wait_for
from workers.main import build_worker

ADMIN = "history-admin-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}
TOKEN = "history-sandbox-token"
STATUSES = ["submitted", "approved", "captured", "completed"]


@dataclass
class Pipeline:
    settings: Settings
    public: str
    admin: httpx.AsyncClient
    kartapay: KartaPayClient
    ledger: Recorder
    crm: Recorder
    source_secret: str
    redis: aioredis.Redis

    async def webhook(self, event_id: str, payment_id: str) -> None:
        """POST a signed KartaPay webhook naming ``payment_id`` to the public listener."""
        body = orjson.dumps({"type": "payment.updated", "data": {"id": payment_id}})
        headers = {"content-type": "application/json"}
        headers.update(sign_headers(self.source_secret, event_id, body))
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                self.public + "/v1/webhooks/kartapay", content=body, headers=headers
            )
        assert answer.status_code == 202, answer.text

    async def work(self) -> None:
        """Run a real worker (processing and delivery) until the queue is empty."""
        worker = build_worker(self.settings, burst=True, handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()

    async def get(self, path: str, **params: Any) -> Any:
        answer = await self.admin.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
async def pipeline(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[Pipeline]:
    """Sandbox, two subscribers (``ledger`` answers 200 to everything, ``crm`` takes only
    completed and answers 500), the service and an admin client."""
    ledger, crm = Recorder(), Recorder(always(500))
    secret = generate_secret()
    async with contextlib.AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01)))
        )
        ledger_url = await stack.enter_async_context(serve_app(ledger.app()))
        crm_url = await stack.enter_async_context(serve_app(crm.app()))
        settings = Settings(
            redis_url=redis_url,
            admin_token=ADMIN,
            kartapay_url=sandbox,
            kartapay_token=TOKEN,
            subscriber_allowlist=["127.0.0.0/8"],
            delivery_retry_schedule_s=["0.1", "0.1"],
            delivery_retry_repeat_s=0,
            delivery_retry_horizon_s=0,
            delivery_jitter=0,
            delivery_breaker_failures=1000,
            worker_poll_delay_s=0.01,
        )
        store = SubscriberStore(redis)
        await store.put(Subscriber(id="ledger", url=ledger_url + "/hook"))
        await store.put(Subscriber(id="crm", url=crm_url + "/hook", events=["payment.completed"]))
        sources = build_sources({"kartapay": {"secrets": [secret]}})
        public, admin = await stack.enter_async_context(serve_listeners(settings, sources))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=admin + "/admin", headers=AUTH)
        )
        kartapay = await stack.enter_async_context(KartaPayClient(sandbox, TOKEN))
        yield Pipeline(settings, public, http, kartapay, ledger, crm, secret, redis)


async def one_payment(p: Pipeline, *event_ids: str) -> str:
    """A completed sandbox payment, revealed by one webhook per event id, processed."""
    [payment_id] = await completed_payments(p.kartapay)
    for event_id in event_ids:
        await p.webhook(event_id, payment_id)
    await p.work()
    return payment_id


async def test_payment_timeline_shows_hints_fetches_transitions_deliveries_and_attempts(
    pipeline: Pipeline,
) -> None:
    """A payment's page: its recorded state, the hints that revealed it, the fetch, every
    transition with its webhook-id, each delivery and each attempt, oldest first."""
    p = pipeline
    payment_id = await one_payment(p, "evt_hist_1")
    page = await p.get(f"/payments/{payment_id}")
    assert page["state"]["status"] == "completed" and page["terminal"] is True
    assert page["convergence"] == {"next_check_ms": None, "stuck": False}
    kinds = [entry["kind"] for entry in page["timeline"]]
    assert kinds[:2] == ["hint", "fetch"]
    hint = page["timeline"][0]
    assert (hint["source"], hint["event_id"]) == ("kartapay", "evt_hist_1")
    assert page["timeline"][1]["status"] == "completed"
    transitions = [e for e in page["timeline"] if e["kind"] == "transition"]
    assert [t["status"] for t in transitions] == STATUSES
    assert [t["webhook_id"] for t in transitions] == [
        transition_id(payment_id, s) for s in STATUSES
    ]
    ledger = [d for d in page["deliveries"] if d["subscriber"] == "ledger"]
    assert [d["state"] for d in ledger] == ["delivered"] * 4
    assert [d["webhook_id"] for d in ledger] == p.ledger.ids()
    [crm] = [d for d in page["deliveries"] if d["subscriber"] == "crm"]
    assert (crm["state"], crm["attempts"], crm["last_status"]) == ("dead", 3, 500)
    attempts = [e for e in page["timeline"] if e["kind"] == "attempt"]
    assert sum(1 for a in attempts if a["subscriber"] == "ledger" and a["status_code"] == 200) == 4
    assert sum(1 for a in attempts if a["subscriber"] == "crm" and a["status_code"] == 500) == 3
    at = [entry["at_ms"] for entry in page["timeline"]]
    assert at == sorted(at)


async def test_events_list_show_filters_and_pages(pipeline: Pipeline) -> None:
    """Events newest first with source/event id/payment id/time filters, a cursor that walks
    every page once, and one event with its archived headers (no signature) and body."""
    p = pipeline
    first = await one_payment(p, "evt_a1", "evt_a2")
    second = await one_payment(p, "evt_b1")
    listed = await p.get("/events")
    assert [(e["event_id"], e["payment_id"]) for e in listed["items"]] == [
        ("evt_b1", second),
        ("evt_a2", first),
        ("evt_a1", first),
    ]
    assert {e["status"] for e in listed["items"]} <= {"processed", "coalesced"}
    assert listed["next_cursor"] is None
    seen, cursor = [], None
    while True:
        page = await p.get("/events", limit=1, **({"cursor": cursor} if cursor else {}))
        seen += [e["event_id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["evt_b1", "evt_a2", "evt_a1"]
    by_payment = await p.get("/events", payment_id=first)
    assert [e["event_id"] for e in by_payment["items"]] == ["evt_a2", "evt_a1"]
    by_id = await p.get("/events", source="kartapay", event_id="evt_a1")
    assert [e["payment_id"] for e in by_id["items"]] == [first]
    assert (await p.get("/events", source="stripe"))["items"] == []
    later = now_ms() + 60_000
    assert (await p.get("/events", since=later))["items"] == []
    assert len((await p.get("/events", until="2100-01-01T00:00:00Z"))["items"]) == 3
    shown = await p.get("/events/kartapay/evt_a1", payment_id=first)
    assert (shown["payment_id"], shown["status"]) == (first, "processed")
    assert orjson.loads(shown["body"])["data"]["id"] == first
    assert "webhook-signature" not in shown["headers"]
    assert shown["headers"]["webhook-id"] == "evt_a1"


async def test_an_event_is_found_by_its_queued_job_then_by_its_payment(
    pipeline: Pipeline,
) -> None:
    """While its job is queued an event is shown without its payment's id; once processed it
    needs ?payment_id= (a 404 saying so without it, or with another payment's)."""
    p = pipeline
    [payment_id] = await completed_payments(p.kartapay)
    await p.webhook("evt_q1", payment_id)
    queued = await p.get("/events/kartapay/evt_q1")
    assert (queued["payment_id"], queued["status"]) == (payment_id, "queued")
    assert orjson.loads(queued["body"])["data"]["id"] == payment_id
    await p.work()
    missing = await p.admin.get("/events/kartapay/evt_q1")
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_event")
    assert "?payment_id=" in missing.json()["detail"]
    other = await p.admin.get("/events/kartapay/evt_q1", params={"payment_id": "pay_other"})
    assert (other.status_code, other.json()["error"]) == (404, "unknown_event")
    shown = await p.get("/events/kartapay/evt_q1", payment_id=payment_id)
    assert (shown["payment_id"], shown["status"]) == (payment_id, "processed")
    assert shown["headers"]["webhook-id"] == "evt_q1"


async def test_bad_parameters_are_400_and_unknown_ids_404(pipeline: Pipeline) -> None:
    """Limits out of range, unreadable times, states and cursors are 400 invalid_query; unknown
    events, payments, deliveries and subscribers are 404, all in the one error shape, and each
    refusal is counted (kartahook_admin_refusals_total)."""
    p = pipeline
    for path, params in [
        ("/events", {"limit": "0"}),
        ("/events", {"limit": "501"}),
        ("/events", {"since": "yesterday"}),
        ("/events", {"until": "2024-05-01T00:00:00"}),
        ("/events", {"cursor": "not-a-cursor"}),
        ("/deliveries", {"state": "lost"}),
        ("/deliveries", {"cursor": "WzEsMl0"}),
    ]:
        answer = await p.admin.get(path, params=params)
        assert answer.status_code == 400, (path, params, answer.text)
        assert answer.json()["error"] == "invalid_query" and answer.json()["detail"]
    for path in [
        "/events/kartapay/evt_nope",
        "/payments/pay_nope",
        "/deliveries/ledger/msg_nope",
        "/deliveries?subscriber=ghost",
    ]:
        answer = await p.admin.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert set(answer.json()) == {"error", "detail"}
    for path in ["/subscribers/ghost/rotate", "/subscribers/ghost/test"]:
        assert (await p.admin.post(path, json={})).status_code == 404
    resend = await p.admin.post("/deliveries/ledger/msg_nope/resend")
    assert (resend.status_code, resend.json()["error"]) == (404, "unknown_delivery")
    bad_body = await p.admin.post("/subscribers/ledger/rotate", json={"overlap_s": -1})
    assert (bad_body.status_code, bad_body.json()["error"]) == (400, "invalid_body")
    bad_secret = await p.admin.post("/subscribers/ledger/rotate", json={"secret": "nope"})
    assert (bad_secret.status_code, bad_secret.json()["error"]) == (400, "invalid_body")
    no_since = await p.admin.post("/subscribers/ledger/resend", json={})
    assert (no_since.status_code, no_since.json()["error"]) == (400, "invalid_body")
    async with httpx.AsyncClient() as http:
        metrics = (
            await http.get(str(p.admin.base_url).rstrip("/").removesuffix("/admin") + "/metrics")
        ).text
    assert 'kartahook_admin_refusals_total{error="invalid_query",status="400"}' in metrics
    assert 'kartahook_admin_refusals_total{error="unknown_delivery",status="404"}' in metrics


async def test_deliveries_list_filters_and_pages(pipeline: Pipeline) -> None:
    """Deliveries by subscriber, payment and state; the cursor walks them all once."""
    p = pipeline
    payment_id = await one_payment(p, "evt_d1")
    everything = await p.get("/deliveries")
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None
    delivered = await p.get("/deliveries", state="delivered")
    assert {d["subscriber"] for d in delivered["items"]} == {"ledger"}
    dead = await p.get("/deliveries", state="dead")
    assert [(d["subscriber"], d["type"]) for d in dead["items"]] == [("crm", "payment.completed")]
    assert (await p.get("/deliveries", subscriber="crm", state="delivered"))["items"] == []
    assert len((await p.get("/deliveries", payment_id=payment_id))["items"]) == 5
    seen, cursor = [], None
    while True:
        page = await p.get("/deliveries", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [(d["subscriber"], d["webhook_id"]) for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted((d["subscriber"], d["webhook_id"]) for d in everything["items"])
    tid = transition_id(payment_id, "captured")
    shown = await p.get(f"/deliveries/ledger/{tid}")
    assert shown["state"] == "delivered" and shown["type"] == "payment.captured"
    assert [a["status"] for a in shown["attempts_log"]] == [200]


async def test_resend_keeps_the_webhook_id_and_bulk_resend_keeps_the_order(
    pipeline: Pipeline, redis: aioredis.Redis
) -> None:
    """A delivered delivery whose body is still kept (crm's dead letters of the same
    transitions hold their snapshots) sent again reaches the subscriber with the same
    webhook-id; a dead one too; a bulk resend since a time sends the payment's deliveries that
    still have a body again in lifecycle order; a delivery still pending is 409; a delivered one
    whose body went with its last reference is 410."""
    p = pipeline
    store = SubscriberStore(redis)
    crm = await store.get("crm")
    assert crm is not None
    await store.put(crm.model_copy(update={"events": ["payment.captured", "payment.completed"]}))
    payment_id = await one_payment(p, "evt_r1")
    tid = transition_id(payment_id, "captured")
    answer = await p.admin.post(f"/deliveries/ledger/{tid}/resend")
    assert answer.status_code == 202, answer.text
    assert answer.json()["webhook_id"] == tid and answer.json()["job_id"]
    again = await p.admin.post(f"/deliveries/ledger/{tid}/resend")
    assert (again.status_code, again.json()["error"]) == (409, "delivery_pending")
    await p.work()
    assert p.ledger.ids().count(tid) == 2
    dead_tid = transition_id(payment_id, "completed")
    assert (await p.admin.post(f"/deliveries/crm/{dead_tid}/resend")).status_code == 202
    before = len(p.crm.requests)
    await p.work()
    assert [r.headers["webhook-id"] for r in p.crm.requests[before:]] == [dead_tid] * 3
    before = len(p.ledger.requests)
    bulk = await p.admin.post("/subscribers/ledger/resend", json={"since": 0})
    assert bulk.status_code == 202 and bulk.json() == {"queued": 2}
    await p.work()
    resent = [r.json["type"] for r in p.ledger.requests[before:]]
    assert resent == ["payment.captured", "payment.completed"]
    expired = transition_id(payment_id, "approved")
    gone = await p.admin.post(f"/deliveries/ledger/{expired}/resend")
    assert (gone.status_code, gone.json()["error"]) == (410, "body_expired")


def signatures(headers: dict[str, str]) -> list[str]:
    return headers["webhook-signature"].split()


def verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        verify([decode_secret(secret)], headers, body)
    except SignatureError:
        return False
    return True


async def test_rotation_signs_with_both_secrets_during_the_overlap_only(
    pipeline: Pipeline, redis: aioredis.Redis
) -> None:
    """After a rotation with an overlap, each delivery carries two signatures and verifies
    with either secret; after the overlap (or with none) only the new secret signs. Secrets
    are never shown by the API but once, by the rotation."""
    p = pipeline
    store = SubscriberStore(redis)
    old = (await store.get("ledger")).secret  # type: ignore[union-attr]
    payment_id = await one_payment(p, "evt_s1")
    # Its body is kept (crm's dead letter of the same transition holds it): it can be resent.
    tid = transition_id(payment_id, "completed")

    async def resent() -> Any:
        assert (await p.admin.post(f"/deliveries/ledger/{tid}/resend")).status_code == 202
        await p.work()
        return p.ledger.requests[-1]

    short = await p.admin.post("/subscribers/ledger/rotate", json={"overlap_s": 1})
    assert short.status_code == 200, short.text
    first = short.json()["secret"]
    assert first.startswith("whsec_") and first != old
    shown = (await p.admin.get("/subscribers/ledger")).text
    assert old not in shown and first not in shown
    assert (await p.admin.get("/subscribers/ledger")).json()["previous_secret_expires_ms"]
    expires = short.json()["previous_expires_ms"]

    async def expired() -> bool:
        return now_ms() > expires

    await wait_for(expired, timeout_s=5)
    after = await resent()
    assert len(signatures(after.headers)) == 1
    assert verifies(first, after.headers, after.body)
    assert not verifies(old, after.headers, after.body)

    rotated = await p.admin.post("/subscribers/ledger/rotate", json={"overlap_s": 3600})
    second = rotated.json()["secret"]
    assert rotated.json()["previous_expires_ms"] > now_ms() + 3_500_000
    during = await resent()
    assert len(signatures(during.headers)) == 2
    assert verifies(first, during.headers, during.body)
    assert verifies(second, during.headers, during.body)

    none = await p.admin.post("/subscribers/ledger/rotate", json={"overlap_s": 0})
    final = none.json()["secret"]
    last = await resent()
    assert len(signatures(last.headers)) == 1 and verifies(final, last.headers, last.body)
    assert not verifies(second, last.headers, last.body)
    assert {r.headers["webhook-id"] for r in p.ledger.requests[-3:]} == {tid}


async def test_test_event_reaches_the_subscriber_signed(
    pipeline: Pipeline, redis: aioredis.Redis
) -> None:
    """POST /subscribers/{id}/test sends one signed webhook.test now; the subscriber verifies
    it with its secret; a subscriber that answers 500 is reported, not retried."""
    p = pipeline
    secret = (await SubscriberStore(redis).get("ledger")).secret  # type: ignore[union-attr]
    answer = await p.admin.post("/subscribers/ledger/test")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["delivered"], result["status"], result["error"]) == (True, 200, None)
    [request] = p.ledger.requests
    assert request.json["type"] == "webhook.test"
    assert request.headers["idempotency-key"] == request.headers["webhook-id"]
    assert verifies(secret, request.headers, request.body)
    failing = (await p.admin.post("/subscribers/crm/test")).json()
    assert (failing["delivered"], failing["status"]) == (False, 500)
    assert len(p.crm.requests) == 1
    await SubscriberStore(redis).put(Subscriber(id="gone", url="http://127.0.0.1:9/hook"))
    down = (await p.admin.post("/subscribers/gone/test")).json()
    assert down["delivered"] is False and down["status"] is None and down["error"]


async def test_overview_counts_rates_and_subscriber_health(pipeline: Pipeline) -> None:
    """The overview: nothing queued, the crm dead letter, events and deliveries of the last
    five minutes, and each subscriber's breaker and counts."""
    p = pipeline
    await one_payment(p, "evt_o1", "evt_o2")
    view = await p.get("/overview")
    assert (view["backlog"], view["dead_letters"], view["event_dead_letters"], view["stuck"]) == (
        0,
        1,
        0,
        0,
    )
    assert view["rates"]["events_5m"] == {"kartapay": 2}
    assert view["rates"]["deliveries_5m"] == {"delivered": 4, "failed": 3}
    health = {s["id"]: s for s in view["subscribers"]}
    assert health["crm"]["dead_letters"] == 1 and health["crm"]["enabled"] is True
    assert health["ledger"]["breaker"] == "closed" and health["ledger"]["inflight"] == 0


async def test_openapi_document_lists_exactly_the_admin_routes(pipeline: Pipeline) -> None:
    """GET /admin/openapi.json (token needed) is OpenAPI 3.1 and has one operation per route of
    the admin router, and no other."""
    from service.api.admin.routes import router_routes
    from service.api.app import admin_extra_routes

    p = pipeline
    async with httpx.AsyncClient() as http:
        refused = await http.get(str(p.admin.base_url) + "/openapi.json")
    assert refused.status_code == 401
    document = await p.get("/openapi.json")
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    served = set()
    for route in router_routes(admin_extra_routes()):
        methods = getattr(route, "methods", None) or set()
        for method in methods - {"HEAD"}:
            served.add((method, "/admin" + route.path))  # type: ignore[attr-defined]
    assert documented == served
    assert ("GET", "/admin/payments/{payment_id}") in documented
