"""The whole pipeline through real processes: Redis, sandbox, ``kartahook serve``,
``kartahook worker`` and two demo subscribers with different filters (the ``stack`` fixture of
tests/e2e/conftest.py, built by kartahook.stack).

The sandbox sends every webhook twice and shuffles them (``--duplicates --out-of-order``); each
subscriber must still get every transition it asked for exactly once by ``webhook-id``, in
lifecycle order per payment, and nothing else.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from kartahook.demo import demo_claim
from kartahook.stack import DemoSubscriber, Stack
from service.kartapay import GATEWAY_CODES, KartaPayClient
from service.settings import Settings
from tests.e2e.conftest import TOKEN

PAYMENTS = 200
LIFECYCLE = ("submitted", "approved", "captured", "completed")  # what a payment emits
DELIVERY_TIMEOUT_S = 150.0


def expected_for(subscriber: DemoSubscriber, channels: dict[str, str]) -> dict[str, list[str]]:
    """Per payment, the statuses ``subscriber`` must receive, in lifecycle order."""
    wanted = [
        s
        for s in LIFECYCLE
        if any(fnmatch.fnmatchcase(f"payment.{s}", pattern) for pattern in subscriber.events)
    ]
    return {
        pid: list(wanted)
        for pid, channel in channels.items()
        if subscriber.channels is None or channel in subscriber.channels
    }


async def create_payments(sandbox_url: str, count: int) -> dict[str, str]:
    """Create and submit ``count`` payments, half on channel ``web``; payment id -> channel."""
    limit = asyncio.Semaphore(16)
    async with KartaPayClient(sandbox_url, TOKEN, timeout=30.0) as kartapay:

        async def one(n: int) -> tuple[str, str]:
            channel = "web" if n % 2 else "pos"
            claim = demo_claim(n)
            claim["context"]["channels"] = [channel]
            async with limit:
                record = await kartapay.create(claim)
                await kartapay.submit(record.id, GATEWAY_CODES[n % len(GATEWAY_CODES)])
            return record.id, channel

        return dict(await asyncio.gather(*(one(n) for n in range(1, count + 1))))


async def received(http: httpx.AsyncClient, subscriber: DemoSubscriber) -> dict[str, Any]:
    response = await http.get(subscriber.base_url() + "/received")
    response.raise_for_status()
    listing: dict[str, Any] = response.json()
    return listing


async def quiet(http: httpx.AsyncClient, p: Stack) -> bool:
    """The sandbox has no webhook left to send and the arq queue is empty."""
    backlog = int((await http.get(p.sandbox_url + "/_sandbox/webhooks")).json()["backlog"])
    client = aioredis.Redis.from_url(p.redis_url)
    try:
        queued = await client.zcard(Settings().queue_name)
    finally:
        await client.aclose()
    return backlog == 0 and queued == 0


async def wait_for_deliveries(
    http: httpx.AsyncClient, p: Stack, expected: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Poll every subscriber until it has its expected count and the pipeline is idle."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    idle_since: float | None = None
    while True:
        listings = {s.id: await received(http, s) for s in p.demo_subscribers}
        done = all(listings[sid]["count"] >= n for sid, n in expected.items())
        if done and await quiet(http, p):
            # Idle for a moment: anything still to come (a stray extra delivery) has had its
            # chance to arrive before the final read.
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                return {s.id: await received(http, s) for s in p.demo_subscribers}
        else:
            idle_since = None
        exited = p.supervisor.first_exited()
        if exited is not None:
            raise AssertionError(f"{exited.name} exited\n{p.log_tails()}")
        if time.monotonic() > deadline:
            counts = {sid: listing["count"] for sid, listing in listings.items()}
            raise AssertionError(f"deliveries incomplete: {counts} of {expected}\n{p.log_tails()}")
        await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_every_subscriber_gets_each_transition_once_in_order_despite_duplicates(
    stack: Stack, tmp_path: Path
) -> None:
    """200 payments with duplicated, shuffled webhooks: each subscriber receives every
    transition it subscribed to (events and channel filter) exactly once by webhook-id, in
    lifecycle order per payment, and nothing it did not subscribe to."""
    p = stack
    async with httpx.AsyncClient(timeout=10.0) as http:
        channels = await create_payments(p.sandbox_url, PAYMENTS)
        assert len(channels) == PAYMENTS
        expected = {s.id: expected_for(s, channels) for s in p.demo_subscribers}
        listings = await wait_for_deliveries(
            http, p, {sid: sum(map(len, exp.values())) for sid, exp in expected.items()}
        )
        sent = (await http.get(p.sandbox_url + "/_sandbox/webhooks")).json()["data"]
    await stack.stop()  # the logs checked below then hold the shutdown too

    # The sandbox really did send duplicates (so exactly-once is not trivially true).
    assert any(record["copy"] > 1 for record in sent), sent[:3]
    assert expected["all-events"] and expected["web-settlements"]
    assert len(expected["web-settlements"]) == PAYMENTS // 2
    for subscriber in p.demo_subscribers:
        listing = listings[subscriber.id]
        entries = listing["received"]
        assert listing["kept"] == listing["count"] == len(entries)  # none scrolled out
        ids = [entry["webhook_id"] for entry in entries]
        assert len(ids) == len(set(ids))  # listed once per webhook-id
        got: dict[str, list[str]] = {}
        for entry in entries:  # arrival order: first arrival of each webhook-id
            # The status is the event type's: ``data`` is the payment as fetched, which may
            # already be further along than the transition.
            assert entry["type"].startswith("payment."), entry
            got.setdefault(entry["payment_id"], []).append(entry["type"].removeprefix("payment."))
        want = expected[subscriber.id]
        missing = {pid: [s for s in want[pid] if s not in got.get(pid, [])] for pid in want}
        missing = {pid: statuses for pid, statuses in missing.items() if statuses}
        assert not missing, f"{subscriber.id}: {len(missing)} payments miss {first(missing)}"
        unwanted = {pid: sorted(set(seen) - set(want.get(pid, []))) for pid, seen in got.items()}
        unwanted = {pid: statuses for pid, statuses in unwanted.items() if statuses}
        assert not unwanted, f"{subscriber.id}: {len(unwanted)} unasked for {first(unwanted)}"
        disordered = {pid: seen for pid, seen in got.items() if seen != want[pid]}
        assert not disordered, f"{subscriber.id}: out of order {first(disordered)}"
        assert len(entries) == sum(map(len, want.values()))
    assert_logs_hold_no_secrets_or_payer_data(tmp_path / "log")


def assert_logs_hold_no_secrets_or_payer_data(log_dir: Path) -> None:
    """No process logged a payer's name or email, a whsec_ secret, a signature or the token."""
    logs = {path.name: path.read_text(errors="replace") for path in log_dir.glob("*.log")}
    assert {"service.log", "worker.log", "sandbox.log"} <= set(logs), sorted(logs)
    for name, text in logs.items():
        for needle in ("@example.com", "Demo Payer", "whsec_", "v1,", TOKEN):
            assert needle not in text, f"{name} holds {needle!r}"


def first(mapping: dict[str, list[str]], n: int = 5) -> dict[str, list[str]]:
    """The first ``n`` items, for a readable failure message."""
    return dict(list(mapping.items())[:n])
