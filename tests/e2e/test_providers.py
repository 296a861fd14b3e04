"""Every provider end to end, KartaPay's own webhooks off: the stack (kartahook.stack, as
``kartahook run`` builds it, all seven sources) with the sandbox in ``--webhooks provider`` mode,
duplicating and shuffling its webhooks.

Payments go through every plan code (STR PYP MVM MVK HOL HRM). The only hints kartahook gets
are the providers' webhooks, each signed or authenticated its provider's way (PayPal's with the
sandbox's certificate, fetched over https and trusted through ``cert_ca_file``). Every
transition must still reach a subscriber once by ``webhook-id``, in lifecycle order, each
delivery verifying with the ``standardwebhooks`` package; MVola only has pending/completed/failed,
so its middle statuses are deduplicated away, and the transitions still arrive because processing
fetches the payment's true state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kartahook.demo import create_and_submit_plans, source_lines, webhook_counts
from kartahook.stack import SOURCE_PLAN_CODES, DemoSubscriber, Stack, Subscriber, isolated_env
from service.domain.signing import generate_secret
from service.kartapay import GATEWAY_CODES, KartaPayClient
from service.settings import Settings
from tests.e2e.conftest import running
from tests.support import serve_app

TOKEN = "e2e-providers-token"
PAYMENTS = 30  # five per plan code
LIFECYCLE = ("submitted", "approved", "captured", "completed")
# Distinct event ids a completed payment makes each provider send: one per status, but MVola
# has only pending and completed (its event id is transaction + status).
EVENTS_PER_PAYMENT = {"stripe": 4, "paypal": 4, "mvola-mg": 2, "mvola-km": 2, "holo": 4, "huri": 4}
SANDBOX_ARGS = ("--step-delay", "0.1", "--duplicates", "--out-of-order", "--seed", "11")
DELIVERY_TIMEOUT_S = 150.0


@dataclass
class Verifier:
    """A subscriber in the test: verifies every delivery with the standardwebhooks package and
    keeps, in arrival order, (webhook-id, type, payment id) of those that verified."""

    secret: str = field(default_factory=generate_secret)
    arrived: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        headers = {name: request.headers.get(name, "") for name in ("webhook-id",
                   "webhook-timestamp", "webhook-signature")}  # fmt: skip
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            self.failures.append(f"{headers['webhook-id']}: {exc}")
            return Response(status_code=401)
        if request.headers.get("idempotency-key") != headers["webhook-id"]:
            self.failures.append(f"{headers['webhook-id']}: Idempotency-Key differs")
        self.arrived.append((headers["webhook-id"], payload["type"], payload["data"]["id"]))
        return Response(status_code=200)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/deliveries", self.receive, methods=["POST"])])


@dataclass
class ProviderStack:
    stack: Stack
    verifier: Verifier


@pytest.fixture
async def providers(tmp_path: Path) -> AsyncIterator[ProviderStack]:
    """The verifier served in the test, then the whole stack with provider webhooks only."""
    verifier = Verifier()
    async with serve_app(verifier.app()) as verifier_url:
        built = Stack(
            tmp_path,
            demo_subscribers=[DemoSubscriber("demo", keep=10_000)],
            subscribers=[Subscriber("verifier", verifier_url + "/deliveries", verifier.secret)],
            token=TOKEN,
            redis_appendonly=False,
            base_env=isolated_env(),
            sandbox_args=SANDBOX_ARGS,
            webhooks="provider",
            grace_s=15.0,
        )
        async with running(built):
            yield ProviderStack(built, verifier)


async def quiet(http: httpx.AsyncClient, stack: Stack) -> bool:
    """The sandbox has no webhook left to send and the arq queue is empty."""
    backlog = int((await http.get(stack.sandbox_url + "/_sandbox/webhooks")).json()["backlog"])
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        queued = await client.zcard(Settings().queue_name)
    finally:
        await client.aclose()
    return backlog == 0 and queued == 0


async def wait_until_delivered(http: httpx.AsyncClient, p: ProviderStack, count: int) -> None:
    """Until the verifier has ``count`` deliveries and the pipeline has been idle for a second
    (so a stray extra delivery would have arrived too)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    idle_since: float | None = None
    while True:
        if len(p.verifier.arrived) >= count and await quiet(http, p.stack):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                return
        else:
            idle_since = None
        exited = p.stack.supervisor.first_exited()
        if exited is not None:
            raise AssertionError(f"{exited.name} exited\n{p.stack.log_tails()}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(p.verifier.arrived)} of {count} deliveries\n{p.stack.log_tails()}"
            )
        await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_provider_webhooks_alone_deliver_every_transition_once_in_order(
    providers: ProviderStack,
) -> None:
    """With only the providers' webhooks (duplicated, shuffled), payments of every plan code
    deliver each transition once by webhook-id, in lifecycle order, verifying with the
    standardwebhooks package; each provider source accepted webhooks and KartaPay's got none."""
    p = providers
    stack = p.stack
    async with KartaPayClient(stack.sandbox_url, TOKEN, timeout=30.0) as kartapay:
        plans = await create_and_submit_plans(kartapay, PAYMENTS)
    assert sorted(set(plans.values())) == sorted(GATEWAY_CODES)
    async with httpx.AsyncClient(timeout=10.0) as http:
        await wait_until_delivered(http, p, PAYMENTS * len(LIFECYCLE))
        sent = (await http.get(stack.sandbox_url + "/_sandbox/webhooks")).json()["data"]
        metrics = (await http.get(stack.admin_url + "/metrics")).text
        demo = (await http.get(stack.demo_subscribers[0].base_url() + "/received")).json()

    assert not p.verifier.failures, p.verifier.failures[:5]
    # Only provider webhooks were sent, with duplicates.
    assert {record["source"] for record in sent} == set(SOURCE_PLAN_CODES) - {"kartapay"}
    assert any(record["copy"] > 1 for record in sent)
    ids = [webhook_id for webhook_id, _, _ in p.verifier.arrived]
    assert len(ids) == len(set(ids)), "a webhook-id arrived twice"
    got: dict[str, list[str]] = {}
    for _, event_type, payment_id in p.verifier.arrived:
        got.setdefault(payment_id, []).append(event_type.removeprefix("payment."))
    assert set(got) == set(plans)
    wrong = {f"{plans[pid]} {pid}": seen for pid, seen in got.items() if seen != list(LIFECYCLE)}
    assert not wrong, wrong
    # The demo subscriber (verifying with its own secret) got them all too.
    assert demo["count"] == demo["kept"] == PAYMENTS * len(LIFECYCLE)
    # Each provider source accepted exactly its distinct event ids (the copies, and MVola's
    # repeated pending, were answered as duplicates); KartaPay's own source saw nothing.
    counts = webhook_counts(metrics)
    lines = "\n".join(source_lines(counts, list(SOURCE_PLAN_CODES)))
    per_code = PAYMENTS // len(GATEWAY_CODES)
    for source, events in EVENTS_PER_PAYMENT.items():
        assert counts[source].get("accepted") == per_code * events, lines
        assert counts[source].get("duplicate", 0) >= per_code * events, lines
        assert set(counts[source]) == {"accepted", "duplicate"}, lines
    assert "kartapay" not in counts, lines


def test_source_lines_read_the_webhooks_counter() -> None:
    """The summary's per-source lines count accepted, duplicate and refused outcomes from the
    /metrics text, one line per source, listed sources first even when they saw nothing."""
    text = (
        "# TYPE kartahook_webhooks_total counter\n"
        'kartahook_webhooks_total{outcome="accepted",source="stripe"} 4.0\n'
        'kartahook_webhooks_total{outcome="duplicate",source="stripe"} 2.0\n'
        'kartahook_webhooks_total{outcome="unauthenticated",source="huri"} 1.0\n'
        'kartahook_webhooks_created{outcome="accepted",source="stripe"} 1.7e9\n'
    )
    counts: dict[str, Any] = webhook_counts(text)
    assert counts == {"stripe": {"accepted": 4, "duplicate": 2}, "huri": {"unauthenticated": 1}}
    assert source_lines(counts, ["kartapay", "stripe"]) == [
        "  kartapay  0 accepted, 0 duplicates",
        "  stripe    4 accepted, 2 duplicates",
        "  huri      0 accepted, 0 duplicates, 1 unauthenticated",
    ]
