"""``GET /admin/payments/stuck`` (the real admin app, uvicorn on 127.0.0.1): the payments
convergence found still not terminal at the horizon, paginated, behind the admin token; and
their counts in ``kartahook status`` and ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.store.layout import CONVERGE, STUCK, payment_state_key
from tests.delivery_support import settings_for
from tests.support import serve_app

TOKEN = "admin-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_url(redis_url: str) -> AsyncIterator[str]:
    settings = settings_for(redis_url, admin_token=TOKEN)
    async with serve_app(create_admin_app(settings)) as base:
        yield base


async def test_stuck_payments_are_listed_in_pages_longest_stuck_first(
    admin_url: str, redis: aioredis.Redis
) -> None:
    """Three stuck payments, two a page: each with its status and times, oldest first, and
    next_offset leading to the last page (null there); a bad offset is 400, no token 401."""
    for n, pid in enumerate(["pay_c", "pay_a", "pay_b"]):
        await redis.hset(payment_state_key(pid), mapping={"status": "submitted", "cv_first": n})
        await redis.zadd(STUCK, {pid: 1_000 + n})
    async with httpx.AsyncClient(base_url=admin_url + "/admin") as http:
        first = (await http.get("/payments/stuck?limit=2", headers=AUTH)).json()
        assert first == {
            "total": 3,
            "payments": [
                {
                    "payment_id": "pay_c",
                    "status": "submitted",
                    "stuck_ms": 1000,
                    "first_seen_ms": 0,
                },
                {
                    "payment_id": "pay_a",
                    "status": "submitted",
                    "stuck_ms": 1001,
                    "first_seen_ms": 1,
                },
            ],
            "next_offset": 2,
        }
        last = (await http.get("/payments/stuck?limit=2&offset=2", headers=AUTH)).json()
        assert [p["payment_id"] for p in last["payments"]] == ["pay_b"]
        assert last["next_offset"] is None
        bad = await http.get("/payments/stuck?offset=-1", headers=AUTH)
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_query")
        assert (await http.get("/payments/stuck")).status_code == 401


async def test_no_stuck_payments_is_an_empty_page(admin_url: str) -> None:
    """With nothing stuck the list is empty, total 0, no next page."""
    async with httpx.AsyncClient(base_url=admin_url + "/admin") as http:
        page = (await http.get("/payments/stuck", headers=AUTH)).json()
    assert page == {"total": 0, "payments": [], "next_offset": None}


async def test_status_and_metrics_count_converging_and_stuck_payments(
    redis_url: str, redis: aioredis.Redis, admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kartahook status` and the admin listener's /metrics count the payments in kh:converge
    and kh:stuck; a stuck payment is an attention item (exit 1)."""
    await redis.set("arq:queue:health-check", "Nov-24 10:00:00 j_complete=1")
    await redis.zadd(CONVERGE, {"pay_1": 1, "pay_2": 2})
    await redis.zadd(STUCK, {"pay_3": 3})
    code = await asyncio.to_thread(cli_main, ["status", "--redis-url", redis_url, "--json"])
    state = orjson.loads(capsys.readouterr().out)
    assert code == 1
    assert state["payments"] == {"converging": 2, "stuck": 1}
    assert any("1 payments stuck" in p for p in state["problems"])
    async with httpx.AsyncClient() as http:
        text = (await http.get(admin_url + "/metrics")).text
    assert 'kartahook_payments{state="converging"} 2.0' in text
    assert 'kartahook_payments{state="stuck"} 1.0' in text
