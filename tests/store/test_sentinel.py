"""The service, a worker and ``kartahook status`` against real Sentinels (``redis+sentinel://``),
with password-protected data nodes and Sentinels that have a password of their own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.signing import generate_secret, sign_headers
from service.kartapay.client import KartaPayClient
from service.store.layout import EVENT, prefix
from service.store.payments import TRANSITIONS_LOG_KEY
from service.store.server import free_port
from tests.sentinel_support import SentinelCluster
from tests.support import (
    completed_payments,
    exit_code,
    serve_app,
    start_kartahook,
    start_worker,
    wait_for,
)

TOKEN = "sentinel-test-token"
FULL_PATH = [b"submitted", b"approved", b"captured", b"completed"]
CLI = [sys.executable, "-m", "kartahook.cli"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """A primary, a replica and three Sentinels, all real processes on 127.0.0.1."""
    with SentinelCluster(tmp_path_factory.mktemp("sentinel")) as started:
        yield started


@pytest.fixture
async def primary(cluster: SentinelCluster) -> AsyncIterator[aioredis.Redis]:
    """A direct client of the current primary, emptied before the test."""
    client = aioredis.from_url(cluster.direct_url(cluster.primary))
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


def kartahook_env(**values: str) -> dict[str, str]:
    """The environment of a kartahook child: ours without any KARTAHOOK_ setting, plus
    ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")}
    return {**env, "PYTHONUNBUFFERED": "1", **values}


def status(*args: str) -> subprocess.CompletedProcess[str]:
    """``kartahook status ARGS`` as a real process."""
    return subprocess.run(
        [*CLI, "status", *args],
        env=kartahook_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_service_worker_and_status_run_through_sentinel(
    cluster: SentinelCluster, primary: aioredis.Redis, tmp_path: Path
) -> None:
    """serve, worker and status all start on a redis+sentinel URL: a signed webhook is
    accepted into the primary, the worker processes it, status reports without a traceback."""
    url = cluster.url()
    secret = generate_secret()
    sources = tmp_path / "sources.yaml"
    sources.write_text(f'sources:\n  kartapay: {{secrets: ["{secret}"]}}\n')
    port = free_port()
    service_log = tmp_path / "service.log"
    service = start_kartahook(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        kartahook_env(KARTAHOOK_REDIS_URL=url, KARTAHOOK_SOURCES_FILE=str(sources)),
        service_log,
    )
    worker: subprocess.Popen[bytes] | None = None
    worker_log = tmp_path / "worker.log"
    try:
        async with (
            serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01))) as sandbox_url,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
        ):
            async with KartaPayClient(sandbox_url, TOKEN) as kartapay:
                (payment_id,) = await completed_payments(kartapay)

            async def ready() -> bool:
                assert service.poll() is None, service_log.read_text()[-3000:]
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout_s=30)

            body = orjson.dumps(
                {"type": "payment.captured", "data": {"id": payment_id, "status": "captured"}}
            )
            headers = {
                "content-type": "application/json",
                **sign_headers(secret, f"msg_{uuid.uuid4().hex}", body),
            }
            accepted = await http.post("/v1/webhooks/kartapay", content=body, headers=headers)
            assert accepted.status_code == 202, accepted.text
            raw_keys = [key async for key in primary.scan_iter(match=f"{prefix(EVENT)}*")]
            assert len(raw_keys) == 1, "the accepted webhook is stored in the primary"

            worker = start_worker(url, sandbox_url, TOKEN, worker_log, worker_poll_delay_s="0.05")

            async def processed() -> bool:
                assert worker is not None and worker.poll() is None, worker_log.read_text()
                return int(await primary.xlen(TRANSITIONS_LOG_KEY)) >= len(FULL_PATH)

            await wait_for(processed, timeout_s=60)
            entries = await primary.xrange(TRANSITIONS_LOG_KEY)
            assert [fields[b"status"] for _, fields in entries] == FULL_PATH
            assert {fields[b"payment_id"] for _, fields in entries} == {payment_id.encode()}

            async def heartbeat() -> bool:
                return bool(await primary.exists("arq:queue:health-check"))

            await wait_for(heartbeat, timeout_s=30)
            report = await asyncio.to_thread(status, "--redis-url", url, "--json")
            assert report.returncode in (0, 1), report.stderr
            assert "Traceback" not in report.stderr
            state = orjson.loads(report.stdout)
            assert state["worker_health"], "status read the worker's heartbeat via Sentinel"
            assert state["backlog"]["ready"] == 0
    finally:
        for process in (worker, service):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert "Traceback" not in service_log.read_text()
    assert "Traceback" not in worker_log.read_text()
    for log in (service_log, worker_log):
        text = log.read_text()
        assert cluster.password not in text and cluster.sentinel_password not in text


@pytest.mark.parametrize(
    ("which", "expected"),
    [("sentinel_password", "No master found"), ("password", "AuthenticationError")],
)
def test_status_with_a_wrong_password_is_one_clear_line(
    cluster: SentinelCluster, which: str, expected: str
) -> None:
    """A wrong Sentinel or primary password makes status print one line and exit 2."""
    url = cluster.url(**{which: "not-the-password"})
    result = status("--redis-url", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kartahook status: cannot read Redis:")
    assert expected in lines[0]
    assert "not-the-password" not in result.stderr
    assert result.stdout == ""


def test_status_with_a_malformed_sentinel_url_names_the_problem() -> None:
    """A Sentinel address without a port is refused in one line that says so."""
    result = status("--redis-url", "redis+sentinel://:secret-pw@127.0.0.1/mymaster")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kartahook status: bad Redis URL: Sentinel address '127.0.0.1' is not host:port "
        "(IPv6 as [::1]:26379)"
    ]


async def test_worker_with_a_wrong_sentinel_password_exits_with_one_line(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    """A worker whose Sentinel password is refused retries, then exits 2 with one line."""
    log = tmp_path / "worker.log"
    url = cluster.url(sentinel_password="not-the-password")
    worker = start_worker(url, "http://127.0.0.1:1", TOKEN, log, log_format="json")
    assert await exit_code(worker, 60) == 2, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "not-the-password" not in text
    errors = [line for line in text.splitlines() if line.startswith("kartahook worker:")]
    assert len(errors) == 1, text
    assert "cannot use Redis: MasterNotFoundError" in errors[0]
    assert "AuthenticationError" in errors[0]
    assert text.count("worker_redis_unavailable") >= 1, "it retried before giving up"


async def test_subscriber_urls_at_the_sentinels_or_the_primary_are_refused(
    cluster: SentinelCluster, primary: aioredis.Redis
) -> None:
    """With a redis+sentinel URL, the admin API refuses URLs at every Sentinel and the primary."""
    from service.api.app import create_admin_app
    from service.settings import Settings

    settings = Settings(
        redis_url=cluster.url(), admin_token=TOKEN, subscriber_allowlist=["0.0.0.0/0"]
    )
    master_port = cluster.master_port()
    assert master_port is not None
    targets = {f"127.0.0.2:{node.port}" for node in cluster.sentinels}
    targets.add(f"127.0.0.1:{master_port}")
    async with (
        serve_app(create_admin_app(settings)) as base,
        httpx.AsyncClient(
            base_url=base + "/admin", headers={"authorization": f"Bearer {TOKEN}"}
        ) as http,
    ):
        for target in sorted(targets):
            answer = await http.post("/subscribers", json={"id": "x", "url": f"http://{target}/"})
            assert (answer.status_code, answer.json()["error"]) == (422, "forbidden_target"), target
        fine = await http.post(
            "/subscribers", json={"id": "x", "url": f"http://127.0.0.1:{free_port()}/"}
        )
        assert fine.status_code == 201
