"""An unexpected exception in the delivery job is logged with its traceback and counted before
it is retried, never dropped (issue 12, item 6), from a real arq worker."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from service.errors import RedisUnavailable
from service.store.layout import FANOUT_DELIVER
from service.store.subscribers import SubscriberStore
from tests.delivery_support import (
    emit,
    make_worker,
    run_until,
    settings_for,
    subscriber,
    transition,
)
from workers.delivery import job as delivery_job


class BuggyDeliver:
    """The delivery runner raising what no delivery code expects (a failed send is an attempt
    record, never an exception: the bug has to be in the runner itself)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        raise RuntimeError("a bug in the delivery path")


def unexpected_count() -> float:
    value = REGISTRY.get_sample_value(
        "kartahook_worker_unexpected_errors_total", {"job": FANOUT_DELIVER}
    )
    return value or 0.0


async def test_unexpected_delivery_error_is_logged_counted_and_retried(
    redis_url: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fanout_deliver raising RuntimeError: error line with exc_info, metric +1, run again."""
    settings = settings_for(redis_url)
    transport = BuggyDeliver()
    monkeypatch.setattr(delivery_job, "deliver", transport)
    before = unexpected_count()
    await SubscriberStore(redis).put(subscriber("ledger", "http://127.0.0.1:9"))
    await emit(redis, settings, transition("pay_bug", "captured"))

    async def logged() -> bool:
        return unexpected_count() >= before + 1

    with capture_logs() as entries:
        await run_until(make_worker(settings, burst=False), logged)
    errors = [e for e in entries if e["event"] == "fanout_deliver_error"]
    assert errors, "no fanout_deliver_error line"
    line = errors[0]
    assert line["log_level"] == "error" and line["exc_info"] is True
    assert (line["subscriber_id"], line["error"]) == ("ledger", "RuntimeError")
    assert line["webhook_id"]
    assert transport.calls >= 1
    assert await redis.zcard(settings.queue_name) >= 1  # retried, not dropped


class StalledFinish:
    """The delivery runner failing as the worker's pipelined connection does when Redis misses
    the deadline of a finish."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        raise RedisUnavailable("the finish missed its deadline")


async def test_a_finish_past_its_redis_deadline_is_retried_as_an_outage_not_a_bug(
    redis_url: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fanout_deliver failing with RedisUnavailable is run again, with no error line and no
    unexpected-error count: it is Redis, not a bug."""
    settings = settings_for(redis_url)
    stalled = StalledFinish()
    monkeypatch.setattr(delivery_job, "deliver", stalled)
    before = unexpected_count()
    await SubscriberStore(redis).put(subscriber("ledger", "http://127.0.0.1:9"))
    await emit(redis, settings, transition("pay_stall", "captured"))

    async def tried_twice() -> bool:
        return stalled.calls >= 2

    with capture_logs() as entries:
        await run_until(make_worker(settings, burst=False), tried_twice)
    assert stalled.calls >= 2
    assert not [e for e in entries if e["event"] == "fanout_deliver_error"]
    assert unexpected_count() == before
    assert await redis.zcard(settings.queue_name) >= 1  # retried, not dropped
