"""``kartahook listen`` and ``kartahook trigger`` against a real stack (kartahook.stack): listen
receives a real delivery, verifies it and forwards it to a real server, and its subscriber is gone
after SIGINT; trigger drives one payment to ``failed`` (or ``canceled``) and a subscriber
receives that event for the triggered payment."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kartahook.stack import DemoSubscriber, Stack, isolated_env
from service.domain.signing import decode_secret, verify
from service.kartapay import KartaPayClient
from tests.e2e.conftest import running
from tests.support import serve_app, wait_for

SANDBOX_TOKEN = "listen-sandbox-token"
ADMIN_TOKEN = "listen-admin-token-0123456789"
CLI = [sys.executable, "-m", "kartahook.cli"]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Redis, one subscriber of every event, the service with its admin API on, a worker and
    the sandbox."""
    built = Stack(
        tmp_path,
        demo_subscribers=[DemoSubscriber("all-events", keep=1000)],
        token=SANDBOX_TOKEN,
        redis_appendonly=False,
        base_env=isolated_env(),
        sandbox_args=("--step-delay", "0.1"),
        admin_token=ADMIN_TOKEN,
        grace_s=15.0,
    )
    async with running(built):
        yield built


def admin(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.admin_url + "/admin",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )


async def subscriber_ids(stack: Stack) -> list[str]:
    async with admin(stack) as client:
        answer = await client.get("/subscribers")
        answer.raise_for_status()
        return [s["id"] for s in answer.json()["subscribers"]]


class Target:
    """The server ``listen`` forwards to: keeps every request, answers 202."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def receive(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        return Response(b"forwarded", 202)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.receive, methods=["POST"])])


async def read_json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), 60)  # a hang guard only
    assert line, "listen stopped writing"
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


@pytest.mark.timeout(300)
async def test_listen_forwards_a_real_delivery_and_removes_its_subscriber_on_sigint(
    stack: Stack,
) -> None:
    """listen registers a subscriber, receives the payment's deliveries from the worker,
    verifies them and forwards each with the same body and webhook-* headers (valid under the
    secret it printed) to the target, answers kartahook with the target's 202; after SIGINT it
    exits 0 and its subscriber is gone from the admin API."""
    target = Target()
    async with serve_app(target.app()) as target_url:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "listen",
            "--forward-to",
            target_url + "/hook",
            "--json",
            "--admin-url",
            stack.admin_url,
            "--token",
            ADMIN_TOKEN,
            env=isolated_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            announced = await read_json_line(process.stdout)
            subscriber_id = announced["subscriber"]
            assert subscriber_id.startswith("listen-")
            assert subscriber_id in await subscriber_ids(stack)

            async with KartaPayClient(stack.sandbox_url, SANDBOX_TOKEN) as kartapay:
                payment = await kartapay.create(
                    {
                        "purchase": {"total": {"value": "5.00", "currency": "EUR"}},
                        "payer": {"fullName": "Listen Payer", "email": "l@example.com"},
                    }
                )
                await kartapay.submit(payment.id, "STR")

            line = await read_json_line(process.stdout)
            assert line["payment_id"] == payment.id
            assert (line["signature"], line["forward_status"]) == ("ok", 202)
            await wait_for(lambda: asyncio.sleep(0, bool(target.requests)), timeout_s=30)
            headers, body = target.requests[0]
            assert headers["webhook-id"] == line["webhook_id"]
            keys = [decode_secret(announced["secret"])]
            assert verify(keys, headers, body) == line["webhook_id"]
            assert orjson.loads(body)["data"]["id"] == payment.id
            # kartahook recorded the target's answer as the subscriber's.
            async with admin(stack) as client:
                attempts = (await client.get(f"/subscribers/{subscriber_id}/attempts")).json()
            assert 202 in [a["status"] for a in attempts["attempts"]]
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 60)
        err = (await process.stderr.read()).decode()
    assert code == 0, err
    assert "Traceback" not in err
    assert subscriber_id not in await subscriber_ids(stack)


async def run_trigger(stack: Stack, *argv: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "trigger",
        *argv,
        "--json",
        "--kartapay-url",
        stack.sandbox_url,
        "--redis-url",
        stack.redis_url,
        env=isolated_env({"KARTAHOOK_KARTAPAY_TOKEN": SANDBOX_TOKEN}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)  # a hang guard only
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = orjson.loads(out)
    return result


@pytest.mark.timeout(300)
async def test_trigger_failed_reaches_a_subscriber_as_payment_failed(stack: Stack) -> None:
    """trigger failed --source MVM: the payment ends failed in kartahook's records and the
    subscriber receives payment.failed for that payment's id; trigger canceled likewise."""
    received_url = stack.demo_subscribers[0].base_url() + "/received"

    async def types_of(payment_id: str) -> list[str]:
        async with httpx.AsyncClient(timeout=10) as http:
            listing = (await http.get(received_url, params={"payment_id": payment_id})).json()
        return [entry["type"] for entry in listing["received"]]

    failed = await run_trigger(stack, "failed", "--source", "MVM")
    assert failed["recorded"][-1] == "failed"
    assert failed["source"] == "MVM"

    async def failed_delivered() -> bool:
        return "payment.failed" in await types_of(failed["payment_id"])

    await wait_for(failed_delivered, timeout_s=60)
    assert "payment.completed" not in await types_of(failed["payment_id"])

    canceled = await run_trigger(stack, "canceled")
    assert canceled["recorded"][-1] == "canceled"

    async def canceled_delivered() -> bool:
        return "payment.canceled" in await types_of(canceled["payment_id"])

    await wait_for(canceled_delivered, timeout_s=60)
