"""The admin API (served by the real app, uvicorn on 127.0.0.1) and the CLI that calls it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.settings import Settings
from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    Recorder,
    emit,
    make_worker,
    run_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import serve_app

TOKEN = "admin-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_url(redis_url: str) -> AsyncIterator[str]:
    """The real admin listener's app with its /admin routes, served on 127.0.0.1."""
    settings = settings_for(redis_url, admin_token=TOKEN, subscriber_allowlist=["127.0.0.0/8"])
    async with serve_app(create_admin_app(settings)) as base:
        yield base


async def test_bad_admin_requests_get_a_clear_4xx(admin_url: str) -> None:
    """Missing or wrong token, invalid URL, host outside the allowlist, unknown subscriber."""
    async with httpx.AsyncClient(base_url=admin_url + "/admin") as http:
        missing = await http.get("/subscribers")
        assert (missing.status_code, missing.json()["error"]) == (401, "missing_token")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/subscribers", headers={"authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["error"]) == (403, "invalid_token")
        cases = [
            ({"id": "a", "url": "ftp://127.0.0.1/x"}, 422, "invalid_url"),
            ({"id": "a", "url": "http://example.com/x"}, 422, "host_not_allowed"),
            ({"id": "a b", "url": "http://127.0.0.1/x"}, 422, "invalid_subscriber"),
            ({"id": "a", "url": "http://127.0.0.1/x", "secret": "nope"}, 422, "invalid_subscriber"),
        ]
        for body, status, code in cases:
            answer = await http.post("/subscribers", json=body, headers=AUTH)
            assert (answer.status_code, answer.json()["error"]) == (status, code), body
            assert answer.json()["detail"]
        bad_json = await http.post("/subscribers", content=b"{", headers=AUTH)
        assert (bad_json.status_code, bad_json.json()["error"]) == (400, "invalid_json")
        for method, path in [
            ("GET", "/subscribers/ghost"),
            ("PATCH", "/subscribers/ghost"),
            ("DELETE", "/subscribers/ghost"),
            ("POST", "/subscribers/ghost/enable"),
            ("POST", "/subscribers/ghost/disable"),
            ("GET", "/subscribers/ghost/attempts"),
            ("GET", "/dead-letters?subscriber=ghost"),
        ]:
            answer = await http.request(method, path, headers=AUTH, json={})
            assert (answer.status_code, answer.json()["error"]) == (404, "unknown_subscriber")
        unknown = await http.post("/dead-letters/ghost/msg_x/replay", headers=AUTH)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_dead_letter")
        since = await http.get("/dead-letters?since=yesterday", headers=AUTH)
        assert (since.status_code, since.json()["error"]) == (400, "invalid_query")


async def test_admin_errors_have_one_shape_and_routing_errors_stay_json(admin_url: str) -> None:
    """An unknown admin route is 404 not_found with the ApiError body (error, detail and nothing
    else); a wrong method is still the app's JSON 405; neither answers without the token."""
    async with httpx.AsyncClient(base_url=admin_url + "/admin") as http:
        unknown = await http.get("/nope", headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "not_found", "detail": "no such admin route"}
        wrong_method = await http.delete("/dead-letters", headers=AUTH)
        assert wrong_method.status_code == 405
        assert wrong_method.json() == {"error": "Method Not Allowed"}
        assert (await http.get("/nope")).json()["error"] == "missing_token"


async def test_admin_disabled_without_a_token(redis_url: str) -> None:
    """With no KARTAHOOK_ADMIN_TOKEN configured the admin API refuses everything."""
    settings = Settings(redis_url=redis_url, admin_token=None)
    async with serve_app(create_admin_app(settings)) as base, httpx.AsyncClient() as http:
        answer = await http.get(base + "/admin/subscribers", headers=AUTH)
    assert (answer.status_code, answer.json()["error"]) == (403, "admin_disabled")


async def test_subscriber_crud_through_the_api(admin_url: str, redis: aioredis.Redis) -> None:
    """Create (secret shown once), list without secrets, patch, disable, enable, delete."""
    async with httpx.AsyncClient(base_url=admin_url + "/admin", headers=AUTH) as http:
        created = await http.post(
            "/subscribers",
            json={"id": "crm", "url": "http://127.0.0.1:9/h", "events": ["payment.*"]},
        )
        assert created.status_code == 201
        secret = created.json()["secret"]
        assert secret.startswith("whsec_")
        again = await http.post("/subscribers", json={"id": "crm", "url": "http://127.0.0.1:9/h"})
        assert (again.status_code, again.json()["error"]) == (409, "subscriber_exists")
        listed = (await http.get("/subscribers")).json()["subscribers"]
        assert [s["id"] for s in listed] == ["crm"] and "secret" not in listed[0]
        patched = await http.patch("/subscribers/crm", json={"concurrency": 3})
        assert patched.json()["concurrency"] == 3
        refused = await http.patch("/subscribers/crm", json={"url": "http://10.0.0.1/"})
        assert refused.json()["error"] == "host_not_allowed"
        assert (await http.post("/subscribers/crm/disable")).json()["enabled"] is False
        assert (await http.post("/subscribers/crm/enable")).json()["enabled"] is True
        stored = await SubscriberStore(redis).get("crm")
        assert stored is not None and stored.secret == secret
        assert (await http.delete("/subscribers/crm")).status_code == 204
        assert await SubscriberStore(redis).get("crm") is None


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli_main, list(argv))


async def test_dead_letters_list_show_and_replay_via_api_and_cli(
    admin_url: str, redis_url: str, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters are listed, shown and replayed (one, per subscriber, since) with the CLI."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.02"])
    answers = {"status": 500}
    recorder = Recorder(lambda _n, _b: (answers["status"], {}, 0.0))
    conn = ["--admin-url", admin_url, "--token", TOKEN]
    async with serve_app(recorder.app()) as base:
        store = SubscriberStore(redis)
        await store.put(subscriber("a", base))
        await store.put(subscriber("b", base))
        items = [transition(f"pay_{i}", "captured") for i in range(3)]
        for item in items:
            await emit(redis, settings, item)
        await run_worker(make_worker(settings))
        capsys.readouterr()

        assert await _cli("dlq", *conn, "list") == 0
        listing = capsys.readouterr().out
        assert "6 dead letter(s)" in listing
        assert await _cli("dlq", *conn, "show", "a", items[0].id) == 0
        assert f'"webhook_id": "{items[0].id}"' in capsys.readouterr().out
        assert await _cli("subscribers", *conn, "attempts", "a") == 0
        assert "dead" in capsys.readouterr().out

        answers["status"] = 200
        assert await _cli("dlq", *conn, "replay", "a", items[0].id) == 0
        assert await _cli("dlq", *conn, "replay", "b") == 0
        assert "3 replayed" in capsys.readouterr().out
        assert await _cli("dlq", *conn, "replay", "--since", "2000-01-01T00:00:00Z") == 0
        assert "2 replayed" in capsys.readouterr().out
        assert await _cli("dlq", *conn, "show", "a", "msg_missing") == 1
        assert "404" in capsys.readouterr().err
        assert await _cli("dlq", "--kind", "bogus", *conn, "list") == 1
        await run_worker(make_worker(settings))
    delivered = {(r.headers["webhook-id"]) for r in recorder.delivered()}
    assert delivered == {item.id for item in items}
    assert len(recorder.delivered()) == 6
    assert await _cli("dlq", *conn, "list") == 0
    assert "0 dead letter(s)" in capsys.readouterr().out


async def test_subscribers_cli_add_list_disable_enable_remove(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """kartahook subscribers add/list/disable/enable/remove work against the admin API."""
    conn = ["--admin-url", admin_url, "--token", TOKEN]
    assert (
        await _cli(
            "subscribers",
            *conn,
            "add",
            "ledger",
            "http://127.0.0.1:9/h",
            "--events",
            "payment.captured",
            "--header",
            "X-Team=ledger",
        )
        == 0
    )
    assert "secret: whsec_" in capsys.readouterr().out
    assert await _cli("subscribers", *conn, "disable", "ledger") == 0
    assert await _cli("subscribers", *conn, "list") == 0
    assert "disabled" in capsys.readouterr().out
    assert await _cli("subscribers", *conn, "enable", "ledger") == 0
    assert await _cli("subscribers", *conn, "remove", "ledger") == 0
    assert await _cli("subscribers", *conn, "remove", "ledger") == 1
    assert "404: no subscriber" in capsys.readouterr().err
    assert await _cli("subscribers", *conn, "add", "x", "http://example.com/") == 1
    assert "allowlist" in capsys.readouterr().err
    assert await _cli("subscribers", "--admin-url", admin_url, "list") == 1
    assert "401" in capsys.readouterr().err
