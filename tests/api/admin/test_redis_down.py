"""The admin API while Redis is down or stalled: 503 ``redis_unavailable`` with Retry-After,
one log line and a refusal counted, never a 500; and its own Redis deadline, longer than
ingestion's.

Uses its own redis-server (not the shared fixture), since the tests stop and pause it.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
from structlog.testing import capture_logs

from service.api.app import create_admin_app
from service.metrics import ADMIN_REFUSALS
from service.settings import Settings
from service.store.server import RedisServer
from tests.support import serve_app

TOKEN = "admin-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# One read and one write of each family: subscribers, history, dead letters, stuck payments.
REQUESTS = [
    ("GET", "/subscribers", None),
    ("GET", "/overview", None),
    ("GET", "/events", None),
    ("GET", "/payments/pay_1", None),
    ("GET", "/deliveries", None),
    ("GET", "/events/dead-letters", None),
    ("GET", "/payments/stuck", None),
    ("POST", "/subscribers", {"id": "crm", "url": "http://127.0.0.1:9/hook"}),
    ("PATCH", "/subscribers/crm", {"enabled": False}),
]


def settings_for(server: RedisServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": server.url,
        "sources_file": None,
        "admin_token": TOKEN,
        "retry_after_s": 7,
        "redis_timeout_s": 0.2,
        "admin_redis_timeout_s": 0.5,
        "subscriber_allowlist": ["127.0.0.0/8"],
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def refusals() -> float:
    value = ADMIN_REFUSALS.labels("503", "redis_unavailable")._value.get()
    return float(value)


async def test_redis_down_is_503_with_retry_after_never_500(own_redis: RedisServer) -> None:
    """With Redis stopped, every admin route answers 503 redis_unavailable + Retry-After, logs
    a line and counts a refusal; once Redis is back, the same requests succeed."""
    async with (
        serve_app(create_admin_app(settings_for(own_redis))) as base,
        httpx.AsyncClient(base_url=base + "/admin", headers=AUTH) as http,
    ):
        assert (await http.get("/subscribers")).status_code == 200
        own_redis.stop()
        before = refusals()
        with capture_logs() as logs:
            for method, path, body in REQUESTS:
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.json()["error"] == "redis_unavailable"
                assert answer.headers["retry-after"] == "7"
        assert refusals() - before == len(REQUESTS)
        lines = [e for e in logs if e["event"] == "admin_redis_unavailable"]
        assert [(e["method"], e["path"]) for e in lines] == [
            (method, "/admin" + path) for method, path, _ in REQUESTS
        ]
        own_redis.start()
        created = await http.post("/subscribers", json=REQUESTS[-2][2])
        assert created.status_code == 201, created.text
        assert (await http.get("/subscribers/crm")).json()["id"] == "crm"


async def test_stalled_redis_answers_503_after_the_admin_deadline(
    own_redis: RedisServer,
) -> None:
    """A Redis that stops answering (SIGSTOP) makes an admin read 503 once the admin deadline
    has passed, not a 500 and not a hang; after SIGCONT the read succeeds."""
    assert own_redis.process is not None
    async with (
        serve_app(create_admin_app(settings_for(own_redis))) as base,
        httpx.AsyncClient(base_url=base + "/admin", headers=AUTH, timeout=30) as http,
    ):
        assert (await http.get("/overview")).status_code == 200
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            answer = await http.get("/overview")
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert (answer.status_code, answer.json()["error"]) == (503, "redis_unavailable")
        deadline = asyncio.get_running_loop().time() + 10
        while (await http.get("/overview")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, "admin never recovered"
            await asyncio.sleep(0.05)


async def test_admin_reads_get_their_own_longer_deadline(own_redis: RedisServer) -> None:
    """The admin client's socket timeout is admin_redis_timeout_s, not ingestion's
    redis_timeout_s: a read that takes longer than ingestion's deadline still answers 200."""
    settings = settings_for(own_redis, redis_timeout_s=0.05, admin_redis_timeout_s=5.0)
    async with (
        serve_app(create_admin_app(settings)) as base,
        httpx.AsyncClient(base_url=base + "/admin", headers=AUTH, timeout=30) as http,
    ):
        assert (await http.get("/overview")).status_code == 200
        assert own_redis.process is not None
        # Redis answers nothing for 0.3 s: six times ingestion's deadline, well within
        # the admin's.
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, os.kill, own_redis.process.pid, signal.SIGCONT)
        try:
            answer = await http.get("/overview")
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert answer.status_code == 200, answer.text
