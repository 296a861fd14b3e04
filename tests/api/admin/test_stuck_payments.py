"""``GET /admin/payments/stuck`` (the real admin app, uvicorn on 127.0.0.1): the payments
convergence found still not terminal at the horizon, paginated, behind the admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from service.api.app import create_admin_app
from service.store.layout import STUCK, payment_state_key
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
