"""The two listeners of ``kartahook serve``: the public one serves webhooks and probes only, the
admin one serves /admin, /metrics and probes; in process and as a real ``kartahook serve``."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from service.api.ingest.sources import build_sources
from service.domain.signing import generate_secret, sign_headers
from service.settings import Settings
from service.store.server import free_port
from tests.support import exit_code, serve_listeners, start_kartahook, wait_for

TOKEN = "listener-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def two_ports() -> tuple[int, int]:
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    return port, admin_port


def signed_webhook(secret: str, event_id: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"type": "payment.captured", "data": {"id": "pay_listen"}})
    headers = sign_headers(secret, event_id, body)
    headers["content-type"] = "application/json"
    return body, headers


async def test_each_listener_serves_only_its_own_routes(redis_url: str) -> None:
    """Public port: webhook 202, probes, /admin and /metrics 404. Admin port: /admin and
    /metrics answer, the webhook path is 404, probes answer."""
    secret = generate_secret()
    sources = build_sources({"kartapay": {"secrets": [secret]}})
    settings = Settings(redis_url=redis_url, admin_token=TOKEN)
    async with serve_listeners(settings, sources) as (public, admin), httpx.AsyncClient() as http:
        body, headers = signed_webhook(secret, "evt_listen_1")
        accepted = await http.post(public + "/v1/webhooks/kartapay", content=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert (await http.get(public + "/healthz")).status_code == 200
        assert (await http.get(public + "/readyz")).status_code == 200
        assert (await http.get(public + "/admin/subscribers", headers=AUTH)).status_code == 404
        assert (await http.get(public + "/admin/openapi.json")).status_code == 404
        assert (await http.get(public + "/metrics")).status_code == 404

        body, headers = signed_webhook(secret, "evt_listen_2")
        refused = await http.post(admin + "/v1/webhooks/kartapay", content=body, headers=headers)
        assert refused.status_code == 404
        listing = await http.get(admin + "/admin/subscribers", headers=AUTH)
        assert listing.status_code == 200, listing.text
        assert (await http.get(admin + "/admin/subscribers")).status_code == 401
        metrics = await http.get(admin + "/metrics")
        assert metrics.status_code == 200 and "kartahook_queue_jobs" in metrics.text
        assert (await http.get(admin + "/healthz")).status_code == 200
        assert (await http.get(admin + "/readyz")).status_code == 200


async def test_forwarded_headers_cannot_reach_the_admin_app(redis_url: str) -> None:
    """A client on the public port cannot reach /admin by claiming another host or port in
    Host or X-Forwarded-* headers: the listener is chosen by the connection's local port."""
    settings = Settings(redis_url=redis_url, admin_token=TOKEN)
    async with serve_listeners(settings, {}) as (public, admin), httpx.AsyncClient() as http:
        admin_hostport = admin.removeprefix("http://")
        sneaky = {
            **AUTH,
            "host": admin_hostport,
            "x-forwarded-host": admin_hostport,
            "x-forwarded-port": admin_hostport.split(":")[1],
            "x-forwarded-for": "127.0.0.1",
        }
        answer = await http.get(public + "/admin/subscribers", headers=sneaky)
    assert answer.status_code == 404


def test_serve_refuses_the_same_port_for_both_listeners(tmp_path: Path) -> None:
    """`serve --admin-port` equal to `--port` exits non-zero with one error line."""
    port = free_port()
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(port)]
    done = subprocess.run(
        [sys.executable, "-m", "kartahook.cli", *argv],
        env={"KARTAHOOK_REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "admin port" in lines[0], lines


@pytest.mark.parametrize("workers", [1, 2])
async def test_real_serve_runs_both_listeners_and_drains_on_sigterm(
    redis_url: str, tmp_path: Path, workers: int
) -> None:
    """`kartahook serve --admin-port P [--workers 2]` as a real process: webhooks on the public
    port only, /admin and /metrics on the admin port only; SIGTERM stops it after a clean
    application shutdown (uvicorn re-raises the signal once drained: -SIGTERM or 0)."""
    secret = generate_secret()
    sources = tmp_path / "sources.yaml"
    sources.write_text('sources:\n  kartapay: {secrets: ["${KP_SECRET}"]}\n')
    port, admin_port = two_ports()
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_SOURCES_FILE": str(sources),
        "KARTAHOOK_ADMIN_TOKEN": TOKEN,
        "KP_SECRET": secret,
        "TMPDIR": str(tmp_path),
    }
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = tmp_path / "serve.log"
    server = start_kartahook([*argv, "--admin-port", str(admin_port)], env, log)
    public, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def both_up() -> bool:
                try:
                    answers = [await http.get(base + "/healthz") for base in (public, admin)]
                except httpx.TransportError:
                    return False
                return all(answer.status_code == 200 for answer in answers)

            await wait_for(both_up, timeout_s=30)
            body, headers = signed_webhook(secret, "evt_real_serve")
            hook = "/v1/webhooks/kartapay"
            assert (
                await http.post(public + hook, content=body, headers=headers)
            ).status_code == 202
            assert (await http.post(admin + hook, content=body, headers=headers)).status_code == 404
            assert (await http.get(public + "/admin/subscribers", headers=AUTH)).status_code == 404
            assert (await http.get(admin + "/admin/subscribers", headers=AUTH)).status_code == 200
            assert (await http.get(public + "/metrics")).status_code == 404
            metrics = await http.get(admin + "/metrics")
            assert 'kartahook_webhooks_total{outcome="accepted",source="kartapay"}' in metrics.text
    finally:
        server.send_signal(signal.SIGTERM)
        code = await exit_code(server, 30)
    output = log.read_text()
    assert code in (0, -signal.SIGTERM), output[-2000:]
    assert output.count("Application shutdown complete.") == workers, output[-2000:]
