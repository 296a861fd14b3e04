"""Convergence through real processes (issue 11, item 4; DESIGN Guarantee 9): a sandbox that
drops every ``completed`` webhook, ``kartahook serve``, ``kartahook worker`` with a compressed
convergence schedule, and a demo subscriber (the stack of kartahook.stack).

Every payment's ``payment.completed`` still reaches the subscriber, found by a convergence
fetch and counted in the worker's ``kartahook_convergence_transitions_total``; a payment held
in ``submitted`` is reported stuck at the (compressed) horizon (admin API, metric, log line)
and leaves the stuck list once it reaches a final state.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kartahook.demo import demo_claim
from kartahook.stack import DemoSubscriber, Stack, isolated_env
from service.kartapay import GATEWAY_CODES, KartaPayClient
from service.store.server import free_port
from tests.e2e.conftest import TOKEN, running

PAYMENTS = 12
ADMIN_TOKEN = "e2e-admin-token"
HORIZON_S = 15
# One step every 2 s: each webhook's fetch runs long before the next step, so every
# ``completed`` (whose webhook is dropped) is found by a convergence check, not by the fetch
# of the ``captured`` webhook.
SANDBOX_ARGS = ("--step-delay", "2.0", "--drop-status", "completed", "--webhooks", "kartapay")
LIFECYCLE = ["payment.submitted", "payment.approved", "payment.captured", "payment.completed"]
DEADLINE_S = 90.0


@pytest.fixture
async def converging(tmp_path: Path) -> AsyncIterator[tuple[Stack, int]]:
    """The stack with a compressed convergence schedule (checks 1 s, 2 s, then every 2 s, for
    15 s, polled every 0.5 s) and the worker's /metrics on a port of its own."""
    metrics_port = free_port()
    env = isolated_env(
        {
            "KARTAHOOK_CONVERGE_SCHEDULE_S": "1,2",
            "KARTAHOOK_CONVERGE_REPEAT_S": "2",
            "KARTAHOOK_CONVERGE_HORIZON_S": str(HORIZON_S),
            "KARTAHOOK_CONVERGE_POLL_S": "0.5",
            "KARTAHOOK_WORKER_METRICS_PORT": str(metrics_port),
            "KARTAHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    built = Stack(
        tmp_path,
        demo_subscribers=[DemoSubscriber("all-events", events=("payment.*",), keep=10_000)],
        token=TOKEN,
        redis_appendonly=False,
        base_env=env,
        sandbox_args=SANDBOX_ARGS,
        grace_s=15.0,
    )
    async with running(built):
        yield built, metrics_port


async def wait_for(what: str, check: Any, stack: Stack, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = await check()
        if value:
            return value
        exited = stack.supervisor.first_exited()
        if exited is not None:
            raise AssertionError(f"{exited.name} exited\n{stack.log_tails()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.log_tails()}")
        await asyncio.sleep(0.25)


async def start_payments(sandbox_url: str, numbers: range) -> list[str]:
    async with KartaPayClient(sandbox_url, TOKEN, timeout=30.0) as kartapay:
        ids = []
        for n in numbers:
            record = await kartapay.create(demo_claim(n))
            await kartapay.submit(record.id, GATEWAY_CODES[n % len(GATEWAY_CODES)])
            ids.append(record.id)
        return ids


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(300)
async def test_payments_converge_without_their_completed_webhook_and_stuck_ones_are_reported(
    converging: tuple[Stack, int], tmp_path: Path
) -> None:
    """With every completed webhook dropped, each payment's payment.completed is delivered
    once, after captured, and the convergence counter counts exactly those; a payment held in
    submitted is listed stuck after the horizon (admin API, metric, log line) and leaves the
    list when it is canceled."""
    stack, metrics_port = converging
    subscriber = stack.demo_subscribers[0]
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(timeout=10.0) as http:
        payments = await start_payments(stack.sandbox_url, range(1, PAYMENTS + 1))

        async def all_completed() -> dict[str, Any] | None:
            listing: dict[str, Any] = (await http.get(subscriber.base_url() + "/received")).json()
            done = {e["payment_id"] for e in listing["received"] if e["type"] == LIFECYCLE[-1]}
            return listing if done >= set(payments) else None

        listing = await wait_for("every payment.completed", all_completed, stack)
        sent = (await http.get(stack.sandbox_url + "/_sandbox/webhooks")).json()["data"]
        sent_types = {record["type"] for record in sent}
        assert set(LIFECYCLE[:-1]) <= sent_types and LIFECYCLE[-1] not in sent_types
        got: dict[str, list[str]] = {}
        ids = [entry["webhook_id"] for entry in listing["received"]]
        assert len(ids) == len(set(ids))  # once by webhook-id
        for entry in listing["received"]:
            got.setdefault(entry["payment_id"], []).append(entry["type"])
        assert {pid: got.get(pid) for pid in payments} == {pid: LIFECYCLE for pid in payments}

        text = (await http.get(worker_metrics)).text
        found = metric(text, "kartahook_convergence_transitions_total", 'status="completed"')
        assert found == PAYMENTS, text

        # A payment held in submitted: the sandbox's next step is far away.
        faults = await http.post(
            stack.sandbox_url + "/_sandbox/faults", json={"step_delay_s": 3600}
        )
        assert faults.status_code == 200, faults.text
        [held] = await start_payments(stack.sandbox_url, range(PAYMENTS + 1, PAYMENTS + 2))
        stuck_url = stack.admin_url + "/admin/payments/stuck"

        async def listed_stuck() -> dict[str, Any] | None:
            page: dict[str, Any] = (await http.get(stuck_url, headers=admin)).json()
            return page if page["total"] else None

        page = await wait_for("the held payment listed stuck", listed_stuck, stack)
        assert page["next_offset"] is None
        [entry] = page["payments"]
        assert entry["payment_id"] == held and entry["status"] == "submitted"
        assert entry["stuck_ms"] - entry["first_seen_ms"] >= HORIZON_S * 1000
        text = (await http.get(worker_metrics)).text
        assert metric(text, "kartahook_payments_stuck_total") == 1.0, text

        async with KartaPayClient(stack.sandbox_url, TOKEN, timeout=30.0) as kartapay:
            await kartapay.cancel(held)

        async def unlisted() -> bool:
            page = (await http.get(stuck_url, headers=admin)).json()
            return page["total"] == 0

        await wait_for("the canceled payment off the stuck list", unlisted, stack)
    await stack.stop()
    lines = [
        json.loads(line)
        for line in (tmp_path / "log" / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    stuck_lines = [line for line in lines if line.get("event") == "payment_stuck"]
    assert [(line["payment_id"], line["status"]) for line in stuck_lines] == [(held, "submitted")]
