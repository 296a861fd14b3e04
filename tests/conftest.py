"""Shared fixtures: a private redis-server started by the tests, never any other Redis."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.store.server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server the tests start on a free port of 127.0.0.1."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (AOF on), for tests that stop, kill or pause it
    (SIGSTOP); resumed and stopped at the end whatever the test did to it."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The URL of the tests' own Redis, emptied before each test."""
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    yield redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the tests' own, emptied Redis."""
    client = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
