"""The start-up check of Redis's memory setting (``service.store.redis_config``), against real
redis-servers the tests start: one with the low default, one as kartahook starts them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from service.store.redis_config import (
    HASH_MAX_LISTPACK_VALUE,
    SETTING,
    check_memory_settings,
)
from service.store.server import RedisServer


@pytest.fixture
def low_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with Redis's own default, 64: too low for the event hashes."""
    server = RedisServer(tmp_path / "low", appendonly=False, hash_max_listpack_value=64).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gauge() -> Gauge:
    return Gauge("kartahook_redis_setting_low", "test", ["setting"], registry=CollectorRegistry())


@pytest.fixture
async def low(low_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(low_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def gauge_value(gauge: Gauge) -> float | None:
    for metric in gauge.collect():
        for sample in metric.samples:
            if sample.labels == {"setting": SETTING}:
                return sample.value
    return None


async def test_a_low_setting_is_one_warning_and_the_gauge_at_one(
    low: aioredis.Redis, gauge: Gauge
) -> None:
    """Against a Redis started with 64, the check logs one warning with the value and the
    advice, and sets the gauge to 1."""
    with capture_logs() as logs:
        assert await check_memory_settings(low, gauge) == 64
    [line] = logs
    assert line["event"] == "redis_memory_setting_low" and line["log_level"] == "warning"
    assert (line["setting"], line["value"], line["wanted"]) == (SETTING, 64, 1024)
    assert f"{SETTING} {HASH_MAX_LISTPACK_VALUE}" in line["advice"]
    assert gauge_value(gauge) == 1


async def test_the_setting_kartahook_starts_redis_with_is_enough(
    redis: aioredis.Redis, gauge: Gauge
) -> None:
    """Against the tests' Redis (started as kartahook starts it), nothing is logged and the
    gauge is 0."""
    with capture_logs() as logs:
        assert await check_memory_settings(redis, gauge) == HASH_MAX_LISTPACK_VALUE
    assert logs == []
    assert gauge_value(gauge) == 0


async def test_a_refused_config_command_is_an_info_line_and_start_up_goes_on(
    low_server: RedisServer, low: aioredis.Redis, gauge: Gauge
) -> None:
    """A Redis that refuses CONFIG (an ACL user without it, as managed Redis often is): one info
    line, no gauge, no error."""
    await low.execute_command("ACL", "SETUSER", "app", "on", "nopass", "~*", "+@all", "-config")
    app = aioredis.from_url(low_server.url, username="app")
    try:
        with pytest.raises(ResponseError):
            await app.config_get(SETTING)
        with capture_logs() as logs:
            assert await check_memory_settings(app, gauge) is None
    finally:
        await app.aclose()
    [line] = logs
    assert (line["event"], line["log_level"]) == ("redis_memory_setting_unchecked", "info")
    assert gauge_value(gauge) is None


async def test_an_unreachable_redis_is_an_info_line(gauge: Gauge, low_server: RedisServer) -> None:
    """A Redis that cannot be reached at start-up: one info line, and no exception."""
    port = low_server.port
    low_server.stop()
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    try:
        with capture_logs() as logs:
            assert await check_memory_settings(client, gauge) is None
    finally:
        await client.aclose()
    assert [line["event"] for line in logs] == ["redis_memory_setting_unchecked"]
