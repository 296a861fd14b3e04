"""Send-time guards, with real requests: a real burst arq worker, real subscriber servers, the
admin API served on 127.0.0.1. The worker re-checks the allowlist and kartahook's own listeners
before each send (a subscriber now outside is paused with the reason, its deliveries parked,
nothing sent); every failure to send, however raised, is an attempt record."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.store.deliveries import DeliveryAdmin
from service.store.layout import attempt_log_key
from service.store.status import snapshot
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
EVERYWHERE = ["0.0.0.0/0", "::/0", "localhost", socket.gethostname()]


async def attempts(redis: aioredis.Redis, subscriber_id: str) -> list[dict[str, Any]]:
    """The subscriber's attempt log, oldest first."""
    raw = await redis.lrange(attempt_log_key(subscriber_id), 0, -1)  # type: ignore[misc]
    return [orjson.loads(entry) for entry in reversed(raw)]


def payments_in_order(recorder: Recorder) -> dict[str, list[str]]:
    """Per payment, the statuses the recorder received, in arrival order."""
    seen: dict[str, list[str]] = {}
    for received in recorder.delivered():
        data = received.json["data"]
        seen.setdefault(data["id"], []).append(data["status"])
    return seen


async def test_a_narrowed_allowlist_pauses_the_subscriber_and_enable_resumes_in_order(
    redis_url: str, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Narrowed allowlist: paused with reason, nothing sent, parked; enable delivers in order."""
    wide = settings_for(
        redis_url, admin_token=TOKEN, subscriber_allowlist=["127.0.0.0/8", "localhost"]
    )
    narrow = settings_for(redis_url, subscriber_allowlist=["localhost"])
    ledger, crm = Recorder(), Recorder()
    items = [transition("pay_1", s) for s in ("pending", "captured", "completed")]
    items.append(transition("pay_2", "captured"))
    async with (
        serve_app(ledger.app()) as ledger_base,
        serve_app(crm.app()) as crm_base,
        serve_app(create_admin_app(wide)) as admin_base,
        httpx.AsyncClient(base_url=admin_base + "/admin", headers=AUTH) as http,
    ):
        created = await http.post(
            "/subscribers", json={"id": "ledger", "url": ledger_base + "/hook"}
        )
        assert created.status_code == 201
        crm_url = crm_base.replace("127.0.0.1", "localhost") + "/hook"
        assert (
            await http.post("/subscribers", json={"id": "crm", "url": crm_url})
        ).status_code == 201
        for item in items:
            await emit(redis, wide, item)

        await run_worker(make_worker(narrow))

        assert ledger.requests == []
        assert payments_in_order(crm) == {
            "pay_1": ["pending", "captured", "completed"],
            "pay_2": ["captured"],
        }
        shown = (await http.get("/subscribers/ledger")).json()
        assert shown["enabled"] is False
        reason = shown["disabled_reason"]
        assert reason.startswith("outside_allowlist: host 127.0.0.1"), reason
        log = await attempts(redis, "ledger")
        assert log and {entry["outcome"] for entry in log} == {"paused"}
        assert all(entry["error"] == reason and entry["status"] is None for entry in log)
        state = {s["id"]: s for s in (await snapshot(redis, wide.queue_name))["subscribers"]}
        assert state["ledger"]["disabled_reason"] == reason
        assert state["ledger"]["waiting"] == 2  # the head of each payment's line, parked
        assert state["ledger"]["dead_letters"] == 0 and state["ledger"]["in_flight"] == 0
        assert await DeliveryAdmin(redis, wide.queue_name).dead_letter_count() == 0
        capsys.readouterr()
        await asyncio.to_thread(cli_main, ["status", "--redis-url", redis_url])
        assert reason in capsys.readouterr().out

        enabled = await http.post("/subscribers/ledger/enable")
        assert enabled.status_code == 200 and enabled.json()["disabled_reason"] is None
        await run_worker(make_worker(wide))

    assert payments_in_order(ledger) == {
        "pay_1": ["pending", "captured", "completed"],
        "pay_2": ["captured"],
    }
    assert len(ledger.requests) == 4
    assert (await attempts(redis, "ledger"))[-1]["outcome"] == "delivered"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_url_at_kartahooks_own_listeners_is_paused_at_send_time(
    redis_url: str, redis: aioredis.Redis, transport: str
) -> None:
    """A stored URL at Redis/admin/metrics ports (alias or name) is paused at send time, unsent."""
    metrics_server, admin_server, good = Recorder(), Recorder(), Recorder()
    async with (
        serve_app(metrics_server.app()) as metrics_base,
        serve_app(admin_server.app()) as admin_base,
        serve_app(good.app()) as good_base,
    ):
        metrics_port = urlsplit(metrics_base).port
        admin_port = urlsplit(admin_base).port
        redis_port = urlsplit(redis_url).port
        settings = settings_for(
            redis_url,
            subscriber_allowlist=EVERYWHERE,
            worker_metrics_port=metrics_port,
            admin_port=admin_port,
            delivery_http_transport=transport,
        )
        store = SubscriberStore(redis)
        evil = {
            "metrics": metrics_base,
            "admin": f"http://0.0.0.0:{admin_port}",
            "redis": f"http://[::ffff:127.0.0.2]:{redis_port}",
            "redis-local": f"http://localhost:{redis_port}",
        }
        hostname = socket.gethostname()
        try:
            socket.getaddrinfo(hostname, metrics_port, type=socket.SOCK_STREAM)
        except OSError:
            pass
        else:
            evil["by-name"] = f"http://{hostname}:{metrics_port}"  # checked when resolved
        for sub_id, base in evil.items():
            await store.put(subscriber(sub_id, base))
        await store.put(subscriber("good", good_base))
        await emit(redis, settings, transition("pay_1", "captured"))

        await run_worker(make_worker(settings))

    assert metrics_server.requests == [] and admin_server.requests == []
    assert [r.json["data"]["id"] for r in good.delivered()] == ["pay_1"]
    for sub_id in evil:
        stored = await store.get(sub_id)
        assert stored is not None and stored.enabled is False, sub_id
        assert (stored.disabled_reason or "").startswith("forbidden_target: "), sub_id
        log = await attempts(redis, sub_id)
        assert [entry["outcome"] for entry in log] == ["paused"], sub_id
        assert log[0]["error"] == stored.disabled_reason
    reasons = {s.id: s.disabled_reason or "" for s in await store.all()}
    assert "worker metrics port" in reasons["metrics"]
    assert "admin listener" in reasons["admin"]
    assert "Redis" in reasons["redis"] and "Redis" in reasons["redis-local"]
    if "by-name" in evil:
        assert "resolves to" in reasons["by-name"] or "worker metrics" in reasons["by-name"]
    assert await DeliveryAdmin(redis, settings.queue_name).dead_letter_count() == 0


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_record_the_http_client_refuses_is_an_attempt_and_follows_the_schedule(
    redis_url: str, redis: aioredis.Redis, transport: str
) -> None:
    """A header value the HTTP client refuses is an attempt record each try, then a dead letter."""
    settings = settings_for(redis_url, delivery_http_transport=transport)
    target, good = Recorder(), Recorder()
    async with serve_app(target.app()) as base, serve_app(good.app()) as good_base:
        store = SubscriberStore(redis)
        await store.put(subscriber("crlf", base, headers={"X-Token": "SECRET\r\nInjected: 1"}))
        await store.put(subscriber("utf8", base, headers={"X-Token": "SECRET-caf\u00e9"}))
        await store.put(subscriber("good", good_base))
        item = transition("pay_1", "captured")
        await emit(redis, settings, item)

        await run_worker(make_worker(settings))

    assert target.requests == []
    assert len(good.delivered()) == 1
    schedule = len(settings.delivery_retry_schedule_s)
    for sub_id in ("crlf", "utf8"):
        log = await attempts(redis, sub_id)
        assert [entry["outcome"] for entry in log] == ["retry"] * schedule + ["dead"], sub_id
        assert all(entry["error"] and entry["status"] is None for entry in log), log
        assert "SECRET" not in json.dumps(log), log
        stored = await store.get(sub_id)
        assert stored is not None and stored.enabled is True
    dead = await DeliveryAdmin(redis, settings.queue_name).dead_letters(None, None, 10)
    assert sorted(letter.subscriber for letter in dead) == ["crlf", "utf8"]
    assert all(letter.last_error and "SECRET" not in letter.last_error for letter in dead)
