"""Sandbox lifecycle and webhooks, with real servers on 127.0.0.1: the sandbox, and a receiver
that records what arrives and checks each signature with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.signing import generate_secret
from tests.support import serve_app, wait_for

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLAIM = {"purchase": {"total": {"value": "1000", "currency": "MGA"}}}
SUCCESS = ["init", "submitted", "approved", "captured", "completed"]
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@dataclass
class Received:
    webhook_id: str
    status: int
    body: dict[str, Any]


@dataclass
class Receiver:
    """A webhook receiver: verifies signatures, can fail the first try of each event, or hang."""

    secret: str
    fail_first: int = 0  # answer 500 to the first N attempts of every webhook-id
    always_fail: bool = False
    release: asyncio.Event | None = None  # when set, requests wait for it
    received: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except Exception:
            self.bad_signatures += 1
            return Response(status_code=401)
        if self.release is not None:
            await self.release.wait()
        webhook_id = headers["webhook-id"]
        tries = sum(1 for r in self.received if r.webhook_id == webhook_id)
        status = 500 if self.always_fail or tries < self.fail_first else 204
        self.received.append(Received(webhook_id, status, payload))
        return Response(status_code=status)

    def statuses(self, payment_id: str, *, ok_only: bool = True) -> list[str]:
        return [
            r.body["data"]["status"]
            for r in self.received
            if r.body["data"]["id"] == payment_id and (r.status < 300 or not ok_only)
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(secret=generate_secret())
    app = Starlette(routes=[Route("/hooks", rec.handle, methods=["POST"])])
    async with serve_app(app) as url:
        rec.url = url + "/hooks"
        yield rec
        if rec.release is not None:
            rec.release.set()


def config_for(receiver: Receiver, **overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {
        "token": TOKEN,
        "webhook_url": receiver.url,
        "webhook_secret": receiver.secret,
        "step_delay_s": 0.05,
        "webhook_backoff_s": 0.05,
        "seed": 1,
    }
    values.update(overrides)
    return SandboxConfig(**values)


@contextlib.asynccontextmanager
async def sandbox(config: SandboxConfig) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A running sandbox and an authenticated client for it."""
    async with (
        serve_app(create_app(config)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        yield client, url


async def create_and_submit(client: httpx.AsyncClient, source: str = "MVM") -> str:
    response = await client.post("/v1/payments", json=CLAIM)
    assert response.status_code == 201
    payment_id = str(response.json()["data"]["id"])
    response = await client.post(f"/v1/payments/{payment_id}/submit", json={"source": source})
    assert response.status_code == 200
    return payment_id


async def wait_status(client: httpx.AsyncClient, payment_id: str, status: str) -> dict[str, Any]:
    """Poll the payment until it has ``status``; return it."""
    latest: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal latest
        latest = (await client.get(f"/v1/payments/{payment_id}")).json()
        return bool(latest["status"] == status)

    await wait_for(reached, timeout_s=15)
    return latest


async def sent_records(url: str, payment_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url) as control:
        response = await control.get("/_sandbox/webhooks", params={"paymentId": payment_id})
    records: list[dict[str, Any]] = response.json()["data"]
    return records


async def test_submitted_payment_completes_with_a_signed_webhook_per_step(
    receiver: Receiver,
) -> None:
    """submit -> approved -> captured -> completed by itself; each status sends one verified
    webhook whose body is the payment at that step; every timestamp is set on its step."""
    async with sandbox(config_for(receiver)) as (client, _):
        payment_id = await create_and_submit(client)
        payment = await wait_status(client, payment_id, "completed")

        async def all_arrived() -> bool:
            return len(receiver.statuses(payment_id)) == len(SUCCESS)

        await wait_for(all_arrived, timeout_s=15)
    assert receiver.bad_signatures == 0
    assert sorted(receiver.statuses(payment_id), key=SUCCESS.index) == SUCCESS
    fields = ["createdAt", "submittedAt", "approvedAt", "capturedAt", "completedAt"]
    stamps = [payment[name] for name in fields]
    assert all(TIMESTAMP.match(stamp) for stamp in stamps)
    assert stamps == sorted(stamps)
    assert "canceledAt" not in payment and "failedAt" not in payment
    assert payment["captured"] is True
    by_status = {r.body["data"]["status"]: r for r in receiver.received}
    assert len({r.webhook_id for r in receiver.received}) == len(SUCCESS)
    for status, field_name in zip(SUCCESS, fields, strict=True):
        event = by_status[status]
        assert event.webhook_id.startswith("evt_")
        assert event.body["type"] == f"payment.{status}"
        assert event.body["data"]["id"] == payment_id
        assert event.body["timestamp"] == event.body["data"][field_name] == payment[field_name]
        assert event.body["data"]["captured"] is (status in ("captured", "completed"))


async def test_payment_fails_when_the_fail_ratio_says_so(receiver: Receiver) -> None:
    """With fail_ratio 1 a submitted payment ends in failed, sending payment.failed."""
    async with sandbox(config_for(receiver, fail_ratio=1.0)) as (client, _):
        payment_id = await create_and_submit(client)
        payment = await wait_status(client, payment_id, "failed")

        async def failed_arrived() -> bool:
            return "failed" in receiver.statuses(payment_id)

        await wait_for(failed_arrived, timeout_s=15)
    assert TIMESTAMP.match(payment["failedAt"])
    assert "approvedAt" not in payment and payment["captured"] is False
    assert receiver.statuses(payment_id) == ["init", "submitted", "failed"]
    assert receiver.bad_signatures == 0


async def test_forced_failure_and_cancel_send_their_webhooks(receiver: Receiver) -> None:
    """POST /_sandbox/payments/{id}/fail fails a chosen payment; cancel sends payment.canceled."""
    async with sandbox(config_for(receiver, step_delay_s=30)) as (client, url):
        doomed = await create_and_submit(client)
        async with httpx.AsyncClient(base_url=url) as control:
            response = await control.post(f"/_sandbox/payments/{doomed}/fail")
            assert response.status_code == 200
            assert response.json()["data"]["status"] == "failed"
            again = await control.post(f"/_sandbox/payments/{doomed}/fail")
            assert again.status_code == 400
        response = await client.post("/v1/payments", json=CLAIM)
        canceled = response.json()["data"]["id"]
        response = await client.post(f"/v1/payments/{canceled}/cancel")
        assert response.json()["data"]["status"] == "canceled"

        async def arrived() -> bool:
            return receiver.statuses(doomed) == [
                "init",
                "submitted",
                "failed",
            ] and receiver.statuses(canceled) == ["init", "canceled"]

        await wait_for(arrived, timeout_s=15)
    assert receiver.bad_signatures == 0


async def test_a_planned_outcome_decides_one_payment(receiver: Receiver) -> None:
    """POST /_sandbox/payments/{id}/outcome before submit: `failed` fails that payment (the
    fail ratio is 0), `canceled` cancels it once submitted, `completed` wins over a fail ratio
    of 1; a bad outcome or a payment past its first step is refused with 400."""
    async with sandbox(config_for(receiver, fail_ratio=1.0)) as (client, url):
        await client.post("/_sandbox/faults", json={"fail_ratio": 0.0})
        ids: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=url) as control:
            for outcome in ("failed", "canceled", "completed"):
                if outcome == "completed":
                    await control.post("/_sandbox/faults", json={"fail_ratio": 1.0})
                created = await client.post("/v1/payments", json=CLAIM)
                payment_id = created.json()["data"]["id"]
                planned = await control.post(
                    f"/_sandbox/payments/{payment_id}/outcome", json={"outcome": outcome}
                )
                assert planned.status_code == 200 and planned.json()["outcome"] == outcome
                submitted = await client.post(
                    f"/v1/payments/{payment_id}/submit", json={"source": "STR"}
                )
                assert submitted.status_code == 200
                ids[outcome] = payment_id
            for outcome, payment_id in ids.items():
                await wait_status(client, payment_id, outcome)
            bad = await control.post(
                f"/_sandbox/payments/{ids['failed']}/outcome", json={"outcome": "failed"}
            )
            assert bad.status_code == 400  # already final
            created = await client.post("/v1/payments", json=CLAIM)
            unknown = await control.post(
                f"/_sandbox/payments/{created.json()['data']['id']}/outcome",
                json={"outcome": "refunded"},
            )
            assert unknown.status_code == 400
            missing = await control.post(
                "/_sandbox/payments/nope/outcome", json={"outcome": "failed"}
            )
            assert missing.status_code == 404

        async def arrived() -> bool:
            return (
                receiver.statuses(ids["failed"]) == ["init", "submitted", "failed"]
                and receiver.statuses(ids["canceled"]) == ["init", "submitted", "canceled"]
                and receiver.statuses(ids["completed"]) == SUCCESS
            )

        await wait_for(arrived, timeout_s=15)


async def test_webhook_is_retried_when_the_receiver_fails(receiver: Receiver) -> None:
    """A receiver that answers 500 once per event still gets every event, re-signed, with the
    same webhook-id; the sandbox records both attempts."""
    receiver.fail_first = 1
    async with sandbox(config_for(receiver)) as (client, url):
        payment_id = await create_and_submit(client)

        async def all_delivered() -> bool:
            return len(receiver.statuses(payment_id)) == len(SUCCESS)

        await wait_for(all_delivered, timeout_s=20)
        records = await sent_records(url, payment_id)
    assert receiver.bad_signatures == 0
    for status in SUCCESS:
        tries = [r for r in receiver.received if r.body["data"]["status"] == status]
        assert [r.status for r in tries] == [500, 204]
        assert tries[0].webhook_id == tries[1].webhook_id
        assert tries[0].body == tries[1].body
    assert len(records) == len(SUCCESS)
    for record in records:
        assert [a["status"] for a in record["attempts"]] == [500, 204]
        assert record["delivered"] is True


async def test_webhook_sending_gives_up_after_max_attempts(receiver: Receiver) -> None:
    """Retries are bounded: a receiver that always fails gets webhook_max_attempts tries."""
    receiver.always_fail = True
    async with sandbox(config_for(receiver, webhook_max_attempts=3)) as (client, url):
        response = await client.post("/v1/payments", json=CLAIM)
        payment_id = response.json()["data"]["id"]

        async def given_up() -> bool:
            records = await sent_records(url, payment_id)
            return bool(records) and records[0]["done"]

        await wait_for(given_up, timeout_s=15)
        records = await sent_records(url, payment_id)
    assert len(records[0]["attempts"]) == 3 and records[0]["delivered"] is False
    assert [r.status for r in receiver.received] == [500, 500, 500]


async def test_duplicates_option_sends_each_webhook_id_twice(receiver: Receiver) -> None:
    """duplicate_webhooks sends every event twice, with the same webhook-id and body."""
    async with sandbox(config_for(receiver, duplicate_webhooks=True)) as (client, _):
        payment_id = await create_and_submit(client)

        async def all_twice() -> bool:
            return len(receiver.statuses(payment_id)) == 2 * len(SUCCESS)

        await wait_for(all_twice, timeout_s=15)
    assert receiver.bad_signatures == 0
    ids: dict[str, list[dict[str, Any]]] = {}
    for r in receiver.received:
        ids.setdefault(r.webhook_id, []).append(r.body)
    assert len(ids) == len(SUCCESS)
    assert all(len(bodies) == 2 and bodies[0] == bodies[1] for bodies in ids.values())


async def test_out_of_order_option_shuffles_a_payments_webhooks(receiver: Receiver) -> None:
    """out_of_order_webhooks delivers all events of a payment, but not in lifecycle order."""
    config = config_for(
        receiver, step_delay_s=0.01, out_of_order_webhooks=True, out_of_order_window_s=1.0
    )
    async with sandbox(config) as (client, _):
        payment_id = await create_and_submit(client)

        async def all_arrived() -> bool:
            return len(receiver.statuses(payment_id)) == len(SUCCESS)

        await wait_for(all_arrived, timeout_s=20)
    arrived = receiver.statuses(payment_id)
    assert sorted(arrived, key=SUCCESS.index) == SUCCESS
    assert arrived != SUCCESS


async def test_stuck_receiver_never_blocks_the_api(receiver: Receiver) -> None:
    """While the receiver hangs on every webhook, the API still answers and payments complete;
    shutting the sandbox down cancels the pending sends."""
    receiver.release = asyncio.Event()
    async with sandbox(config_for(receiver)) as (client, url):
        payment_ids = [await create_and_submit(client) for _ in range(3)]
        for payment_id in payment_ids:
            await wait_status(client, payment_id, "completed")
        async with httpx.AsyncClient(base_url=url) as control:
            backlog = (await control.get("/_sandbox/webhooks")).json()["backlog"]
        assert backlog > 0
    assert receiver.received == []


async def test_webhook_bodies_are_compact_json_of_the_kartapay_format(receiver: Receiver) -> None:
    """The body has exactly type, timestamp and data (the payment, id included)."""
    async with sandbox(config_for(receiver)) as (client, _):
        response = await client.post("/v1/payments", json=CLAIM)
        payment = response.json()["data"]

        async def arrived() -> bool:
            return bool(receiver.received)

        await wait_for(arrived)
    body = receiver.received[0].body
    assert set(body) == {"type", "timestamp", "data"}
    assert body["data"] == payment
