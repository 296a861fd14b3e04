"""`kartahook status` and `kartahook config check` for subscribers, against a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.domain.events import EventHint
from service.domain.signing import generate_secret
from service.store.dead_letters import EventDeadLetters
from service.store.subscribers import Subscriber, SubscriberStore


async def test_status_reports_backlog_dead_letters_and_subscribers(
    redis_url: str, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """status counts ready and deferred jobs, dead letters, disabled subscribers; exit 1."""
    now_ms = int(time.time() * 1000)
    await redis.zadd("arq:queue", {"a": now_ms - 5000, "b": now_ms - 10, "c": now_ms + 60_000})
    hint = EventHint("kartapay", "evt_1", "pay_1", now_ms)
    await EventDeadLetters(redis).add(hint, "not_found", "404")
    store = SubscriberStore(redis)
    await store.put(Subscriber(id="ledger", url="http://127.0.0.1:1/x"))
    await store.put(Subscriber(id="crm", url="http://127.0.0.1:2/x", enabled=False))

    code = await asyncio.to_thread(cli_main, ["status", "--redis-url", redis_url, "--json"])
    state = orjson.loads(capsys.readouterr().out)
    assert code == 1
    assert state["backlog"]["ready"] == 2 and state["backlog"]["deferred"] == 1
    assert state["backlog"]["oldest_ready_age_s"] >= 5
    assert state["dead_letters"] == {"events": 1, "deliveries": 0}
    assert {s["id"]: s["enabled"] for s in state["subscribers"]} == {"ledger": True, "crm": False}
    assert any("crm is disabled" in p for p in state["problems"])
    assert any("no worker heartbeat" in p for p in state["problems"])


async def test_status_is_zero_when_healthy(
    redis_url: str, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a worker heartbeat, no dead letters and healthy subscribers, status exits 0."""
    await redis.set("arq:queue:health-check", "Nov-24 10:00:00 j_complete=1")
    await SubscriberStore(redis).put(Subscriber(id="ledger", url="http://127.0.0.1:1/x"))
    assert await asyncio.to_thread(cli_main, ["status", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "subscriber ledger: enabled, breaker closed" in out
    assert "attention" not in out


def test_config_check_validates_the_subscribers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config check accepts a valid subscribers file and names the problem of a bad one."""
    secret = generate_secret()
    sources = tmp_path / "sources.yaml"
    sources.write_text('sources:\n  kartapay: {secrets: ["${KP_SECRET}"]}\n')
    monkeypatch.setenv("KP_SECRET", secret)
    monkeypatch.setenv("LEDGER_SECRET", secret)
    good = tmp_path / "subscribers.yaml"
    good.write_text(
        "subscribers:\n  - id: ledger\n    url: http://127.0.0.1:9000/hooks\n"
        '    secret: "${LEDGER_SECRET}"\n    events: ["payment.captured"]\n'
    )
    args = ["config", "check", "--sources", str(sources), "--subscribers"]
    assert cli_main([*args, str(good)]) == 0
    assert "subscribers:" in capsys.readouterr().out
    outside = tmp_path / "outside.yaml"
    outside.write_text("subscribers:\n  - id: ledger\n    url: http://example.com/hooks\n")
    assert cli_main([*args, str(outside)]) == 1
    missing = tmp_path / "missing.yaml"
    assert cli_main([*args, str(missing)]) == 1
    err = capsys.readouterr().err
    assert "example.com" in err and "missing.yaml" in err
    assert secret not in err


async def test_service_metrics_include_queue_depth_dead_letters_and_subscribers(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """/metrics of the real service reports queue depth, dead letters and subscriber state."""
    import httpx

    from service.api.app import create_admin_app
    from service.settings import Settings
    from tests.support import serve_app

    now_ms = int(time.time() * 1000)
    await redis.zadd("arq:queue", {"a": now_ms - 1000, "b": now_ms + 60_000})
    await EventDeadLetters(redis).add(EventHint("kartapay", "e", "p", now_ms), "not_found", "404")
    crm = Subscriber(id="crm", url="http://127.0.0.1:2/x", enabled=False)
    await SubscriberStore(redis).put(crm)
    app = create_admin_app(Settings(redis_url=redis_url))  # /metrics: the admin listener
    async with serve_app(app) as base, httpx.AsyncClient() as http:
        text = (await http.get(base + "/metrics")).text
    assert 'kartahook_queue_jobs{state="ready"} 1.0' in text
    assert 'kartahook_queue_jobs{state="deferred"} 1.0' in text
    assert 'kartahook_dead_letters{kind="events"} 1.0' in text
    assert 'kartahook_subscriber_up{subscriber="crm"} 0.0' in text
    assert "kartahook_webhooks" in text
