"""Processing's dead letters through the admin API (real app on 127.0.0.1) and `kartahook dlq`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.domain.events import EventHint
from service.settings import Settings
from service.store.dead_letters import EventDeadLetters
from service.store.layout import ARQ_JOB_PREFIX, PROCESS_EVENT, hint_job_id
from tests.support import serve_app

TOKEN = "admin-events-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_url(redis_url: str) -> AsyncIterator[str]:
    """The real admin listener's app with its /admin routes, served on 127.0.0.1."""
    settings = Settings(redis_url=redis_url, admin_token=TOKEN)
    async with serve_app(create_admin_app(settings)) as base:
        yield base


async def _dead(redis: aioredis.Redis, n: int) -> EventHint:
    hint = EventHint("kartapay", f"evt_{n}", f"pay_{n}", int(time.time() * 1000), 4)
    await EventDeadLetters(redis).add(hint, "not_found", "NotFoundError: GET -> 404")
    return hint


async def test_event_dead_letters_listed_shown_and_retried_through_the_cli(
    admin_url: str, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI lists and shows an event dead letter, and replay queues a fresh attempt-0 job."""
    first, second = await _dead(redis, 1), await _dead(redis, 2)
    conn = ["dlq", "--kind", "events", "--admin-url", admin_url, "--token", TOKEN]

    assert await asyncio.to_thread(cli_main, [*conn, "list"]) == 0
    listing = capsys.readouterr().out
    assert "2 dead-lettered event(s)" in listing and "pay_1" in listing and "not_found" in listing

    assert await asyncio.to_thread(cli_main, [*conn, "show", hint_job_id(first)]) == 0
    assert '"event_id": "evt_1"' in capsys.readouterr().out

    assert await asyncio.to_thread(cli_main, [*conn, "replay", hint_job_id(first)]) == 0
    assert "1 queued again" in capsys.readouterr().out
    [job_id] = [j.decode() for j in await redis.zrange("arq:queue", 0, -1)]
    job = orjson.loads(await redis.get(ARQ_JOB_PREFIX + job_id))
    assert job["f"] == PROCESS_EVENT
    assert job["a"][0]["event_id"] == "evt_1" and job["a"][0]["attempt"] == 0
    remaining = await EventDeadLetters(redis).entries()
    assert [e["id"] for e in remaining] == [hint_job_id(second)]

    assert await asyncio.to_thread(cli_main, [*conn, "replay", "--all"]) == 0
    assert await EventDeadLetters(redis).count() == 0
    assert await redis.zcard("arq:queue") == 2


async def test_event_dead_letter_api_refuses_bad_requests(admin_url: str) -> None:
    """Unknown entries get 404, a bad 'since' 400/422, and no token 401."""
    async with httpx.AsyncClient(base_url=admin_url + "/admin") as http:
        assert (await http.get("/events/dead-letters")).status_code == 401
        unknown = await http.get("/events/dead-letters/evt:nope", headers=AUTH)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_dead_letter")
        retry = await http.post("/events/dead-letters/evt:nope/retry", headers=AUTH)
        assert retry.status_code == 404
        bad = await http.get("/events/dead-letters?since=soon", headers=AUTH)
        assert bad.status_code == 400
        empty = await http.post("/events/dead-letters/retry", json={}, headers=AUTH)
        assert empty.status_code == 422
