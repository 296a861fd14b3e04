"""schemathesis against ``GET /admin/openapi.json``: every admin operation, called with data
generated from the document against a real ``kartahook serve`` (its admin listener on
127.0.0.1) over the tests' Redis holding subscribers, deliveries and history, answers without a
5xx and as the document says (status code, content type, body schema).

Seeded and few examples per operation (it runs in CI on two cores); no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.domain.events import EventHint
from service.settings import Settings
from service.store.history import HistoryStore, Run
from service.store.server import RedisServer, free_port
from service.store.subscribers import Subscriber, SubscriberStore
from tests.delivery_support import emit, transition

TOKEN = "schemathesis-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 10
# Data the document allows, and data it does not (which must be refused as documented).
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


async def seed(redis_url: str) -> None:
    """Two subscribers, two payments' deliveries and history, through the stores."""
    client = aioredis.from_url(redis_url)
    try:
        await client.flushall()
        store = SubscriberStore(client)
        await store.put(Subscriber(id="ledger", url="http://127.0.0.1:9/hook"))
        await store.put(Subscriber(id="crm", url="http://127.0.0.1:9/crm", enabled=False))
        settings_ = Settings(redis_url=redis_url)
        history = HistoryStore(client)
        for n, pid in enumerate(["pay_conf_1", "pay_conf_2"]):
            for status in ("pending", "submitted"):
                await emit(client, settings_, transition(pid, status))
            hint = EventHint("kartapay", f"evt_conf_{n}", pid, 1_700_000_000_000 + n)
            run = Run(
                hint.received_at_ms,
                hint.received_at_ms + 5,
                "kartapay",
                hint.event_id,
                "submitted",
                "processed",
                ("pending", "submitted"),
            )
            await history.record_run(hint, run, 1_700_000_000_100 + n)
    finally:
        await client.aclose()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"kartahook serve exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError("kartahook serve did not answer in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def admin_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``kartahook serve`` on free ports of 127.0.0.1 over the seeded Redis."""
    asyncio.run(seed(redis_server.url))
    port, admin_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")},
        "KARTAHOOK_REDIS_URL": redis_server.url,
        "KARTAHOOK_ADMIN_TOKEN": TOKEN,
        "KARTAHOOK_LOG_LEVEL": "WARNING",
        "KARTAHOOK_SUBSCRIBER_ALLOWLIST": "127.0.0.0/8",
        "KARTAHOOK_DELIVERY_TIMEOUT_S": "1",
    }
    log: Path = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [sys.executable, "-m", "kartahook.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin_port)]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{admin_port}"
        wait_http(base + "/healthz", process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        asyncio.run(_flush(redis_server.url))


async def _flush(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def test_admin_api_conforms_to_its_openapi_document(admin_url: str) -> None:
    """Each operation of the document, with data generated from it (seeded): no 5xx, and every
    answer's status code, content type and body are the document's."""
    schema = schemathesis.openapi.from_url(admin_url + "/admin/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    statuses: list[int] = []
    for operation, mode in [(op, mode) for op in operations for mode in MODES]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: schemathesis.Case) -> None:
            response = case.call(base_url=admin_url, headers=AUTH)
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        try:
            conforms()
        except Exception as exc:  # every operation's failure is reported, not only the first
            failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 5 * len(operations)
    assert any(400 <= status < 500 for status in statuses)
    assert statuses.count(200) >= len(operations) // 2
