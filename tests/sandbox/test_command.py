"""``kartahook sandbox`` as a real process: serves the API with the token from the environment,
sends signed webhooks, stops on SIGTERM, and keeps secrets and payer data out of its logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.domain.signing import generate_secret
from service.store.server import free_port
from tests.support import serve_app, wait_for

TOKEN = "command-test-token"
EMAIL = "secret.payer@example.test"


def start(port: int, webhook_url: str, secret: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KARTAHOOK_KARTAPAY_TOKEN": TOKEN, "KARTAHOOK_LOG_FORMAT": "json"}
    args = [
        sys.executable,
        "-m",
        "kartahook.cli",
        "sandbox",
        "--port",
        str(port),
        "--webhook-url",
        webhook_url,
        "--webhook-secret",
        secret,
        "--step-delay",
        "0.05",
    ]
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


async def test_sandbox_command_runs_the_simulator(tmp_path: Path) -> None:
    """The command serves /v1 with KARTAHOOK_KARTAPAY_TOKEN, signs webhooks with the given
    secret, shuts down cleanly on SIGTERM, and logs neither token, secret nor payer email."""
    secret = generate_secret()
    received: list[dict[str, Any]] = []

    async def hooks(request: Request) -> Response:
        received.append(Webhook(secret).verify(await request.body(), dict(request.headers)))
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hooks", hooks, methods=["POST"])])
    port = free_port()
    log_path = tmp_path / "sandbox.log"
    async with serve_app(receiver) as receiver_url:
        log = log_path.open("wb")
        process = start(port, receiver_url + "/hooks", secret, log)
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:

                async def up() -> bool:
                    try:
                        return (await client.get("/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_for(up, timeout_s=30, interval_s=0.1)
                assert (await client.get("/v1/payments")).status_code == 401
                auth = {"Authorization": f"Bearer {TOKEN}"}
                claim = {
                    "payer": {"fullName": "Secret Payer", "email": EMAIL},
                    "purchase": {"total": {"value": "5", "currency": "EUR"}},
                }
                response = await client.post("/v1/payments", json=claim, headers=auth)
                assert response.status_code == 201
                payment_id = response.json()["data"]["id"]
                response = await client.post(
                    f"/v1/payments/{payment_id}/submit", json={"source": "STR"}, headers=auth
                )
                assert response.status_code == 200

                async def completed() -> bool:
                    return any(r["type"] == "payment.completed" for r in received)

                await wait_for(completed, timeout_s=30)
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            log.close()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
    assert sorted(r["type"] for r in received) == sorted(
        [
            "payment.init",
            "payment.submitted",
            "payment.approved",
            "payment.captured",
            "payment.completed",
        ]
    )
    logs = log_path.read_text()
    assert "Application shutdown complete" in logs
    assert "webhook sent" in logs and payment_id in logs
    for leak in (TOKEN, secret, secret.removeprefix("whsec_"), EMAIL, "Secret Payer"):
        assert leak not in logs
