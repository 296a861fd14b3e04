"""Fan-out outcomes: retry schedule, Retry-After, 410, network errors, dead letters and replay."""

from __future__ import annotations

import itertools
import time
from typing import Any

import redis.asyncio as aioredis

from service.store.deliveries import DeliveryAdmin
from service.store.server import free_port
from service.store.subscribers import Subscriber, SubscriberStore
from tests.delivery_support import (
    Recorder,
    always,
    emit,
    make_worker,
    run_worker,
    settings_for,
    subscriber,
    transition,
)
from tests.support import serve_app


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_retry_times_follow_the_schedule_with_jitter(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Failed attempts are retried after each step of the schedule, within ±20% jitter."""
    schedule = [0.3, 0.6, 0.9]
    settings = settings_for(
        redis_url, delivery_retry_schedule_s=[str(s) for s in schedule], delivery_jitter=0.2
    )
    recorder = Recorder(lambda n, _b: (500 if n <= 3 else 200, {}, 0.0))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        await emit(redis, settings, transition("pay_r", "captured"))
        await run_worker(make_worker(settings))
    assert [r.status for r in recorder.requests] == [500, 500, 500, 200]
    attempts = list(reversed(await DeliveryAdmin(redis, settings.queue_name).attempts("ledger")))
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "retry", "delivered"]
    recorded = gaps([a["at_ms"] / 1000 for a in attempts])
    for step, gap, attempt in zip(schedule, recorded, attempts, strict=False):
        planned = (attempt["next_attempt_ms"] - attempt["at_ms"]) / 1000
        assert step * 0.8 - 0.001 <= planned <= step * 1.2 + 0.05, (step, planned)
        assert step * 0.8 - 0.001 <= gap <= step * 1.2 + 0.5, (step, gap)


async def test_retry_after_is_honoured(redis_url: str, redis: aioredis.Redis) -> None:
    """A 503 with Retry-After: 1 delays the next attempt by a second, not the 0.1 s step."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.1", "0.1"])
    recorder = Recorder(lambda n, _b: (503, {"retry-after": "1"}, 0.0) if n == 1 else (200, {}, 0))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        await emit(redis, settings, transition("pay_ra", "captured"))
        await run_worker(make_worker(settings))
    first, second = recorder.requests
    assert second.at - first.at >= 0.95


async def test_410_disables_the_subscriber_and_parks_its_delivery(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """410 disables the subscriber; nothing more is sent; enabling it delivers what was parked."""
    settings = settings_for(redis_url)
    answers = {"status": 410}
    recorder = Recorder(lambda _n, _b: (answers["status"], {}, 0.0))
    store = SubscriberStore(redis)
    admin = DeliveryAdmin(redis, settings.queue_name)
    async with serve_app(recorder.app()) as base:
        await store.put(subscriber("gone", base))
        first = transition("pay_g", "captured")
        await emit(redis, settings, first)
        await run_worker(make_worker(settings))
        disabled = await store.get("gone")
        assert disabled is not None and not disabled.enabled
        assert disabled.disabled_reason and "410" in disabled.disabled_reason
        await emit(redis, settings, transition("pay_g2", "captured"))
        await run_worker(make_worker(settings))
        assert len(recorder.requests) == 1
        assert (await admin.attempts("gone"))[0]["outcome"] == "gone"

        answers["status"] = 200
        await store.set_enabled("gone", True)
        assert await admin.wake("gone", 4, int(time.time() * 1000)) == 1
        await run_worker(make_worker(settings))
    assert recorder.ids() == [first.id]


async def test_network_errors_are_retried_then_dead_lettered(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A refused connection is an attempt with an error, retried, then dead-lettered."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.05", "0.05"])
    await SubscriberStore(redis).put(Subscriber(id="down", url=f"http://127.0.0.1:{free_port()}/"))
    await emit(redis, settings, transition("pay_n", "captured"))
    await run_worker(make_worker(settings))
    admin = DeliveryAdmin(redis, settings.queue_name)
    attempts = await admin.attempts("down")
    assert [a["outcome"] for a in attempts] == ["dead", "retry", "retry"]
    assert all(a["status"] is None and "connect" in a["error"] for a in attempts)
    [letter] = await admin.dead_letters()
    assert (letter.subscriber, letter.attempts, letter.last_error) == (
        "down",
        3,
        attempts[0]["error"],
    )


async def test_dead_letter_releases_the_line_and_replay_keeps_the_webhook_id(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """After the schedule is spent the delivery is dead-lettered, the next transition goes, and a
    replay delivers the dead one with the same webhook-id."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.05", "0.05"])
    failing = {"on": True}

    def behaviour(_n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], float]:
        return (500 if failing["on"] and body["type"] == "payment.captured" else 200, {}, 0.0)

    recorder = Recorder(behaviour)
    admin = DeliveryAdmin(redis, settings.queue_name)
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        captured, completed = transition("pay_d", "captured"), transition("pay_d", "completed")
        await emit(redis, settings, captured)
        await emit(redis, settings, completed)
        await run_worker(make_worker(settings))
        assert [(r.json["type"], r.status) for r in recorder.requests] == [
            ("payment.captured", 500),
            ("payment.captured", 500),
            ("payment.captured", 500),
            ("payment.completed", 200),
        ]
        [letter] = await admin.dead_letters(subscriber_id="ledger")
        assert letter.transition_id == captured.id
        shown = await admin.dead_letter("ledger", captured.id)
        assert shown is not None and shown.body is not None
        assert (shown.body["id"], shown.body["data"]["id"]) == (captured.id, "pay_d")

        failing["on"] = False
        assert await admin.replay("ledger", captured.id, int(time.time() * 1000)) == "ok"
        assert await admin.replay("ledger", captured.id, int(time.time() * 1000)) == "not_dead"
        await run_worker(make_worker(settings))
    replayed = recorder.requests[-1]
    assert (replayed.status, replayed.headers["webhook-id"]) == (200, captured.id)
    assert replayed.headers["idempotency-key"] == captured.id
    assert await admin.dead_letters() == []
    assert await admin.dead_letter_count() == 0


async def test_always_failing_subscriber_uses_every_step(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """With an always-failing subscriber, attempts = schedule steps + 1, then a dead letter."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=["0.02"] * 4)
    recorder = Recorder(always(502))
    async with serve_app(recorder.app()) as base:
        await SubscriberStore(redis).put(subscriber("ledger", base))
        await emit(redis, settings, transition("pay_a", "captured"))
        await run_worker(make_worker(settings))
    assert len(recorder.requests) == 5
    assert await DeliveryAdmin(redis, settings.queue_name).dead_letter_count("ledger") == 1


async def test_redirects_are_not_followed_and_slow_answers_time_out(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A 302 is a failed attempt (never followed); a too-slow answer is a timeout."""
    settings = settings_for(redis_url, delivery_retry_schedule_s=[], delivery_timeout_s=0.5)
    target = Recorder()
    redirecting = Recorder(always(302))
    hanging = Recorder(lambda _n, _b: (200, {}, 3.0))
    async with (
        serve_app(target.app()) as target_url,
        serve_app(redirecting.app()) as redirect_url,
        serve_app(hanging.app()) as hanging_url,
    ):
        redirecting.behaviour = lambda _n, _b: (302, {"location": f"{target_url}/hook"}, 0.0)
        store = SubscriberStore(redis)
        await store.put(subscriber("redirect", redirect_url))
        await store.put(subscriber("hang", hanging_url))
        await emit(redis, settings, transition("pay_x", "captured"))
        await run_worker(make_worker(settings))
    admin = DeliveryAdmin(redis, settings.queue_name)
    [redirected] = await admin.attempts("redirect")
    assert (redirected["status"], redirected["outcome"]) == (302, "dead")
    assert target.requests == []
    [timed_out] = await admin.attempts("hang")
    assert (timed_out["status"], timed_out["error"], timed_out["outcome"]) == (
        None,
        "timeout",
        "dead",
    )
    assert timed_out["latency_ms"] < 2000
