"""Helpers the tests share: real HTTP servers on 127.0.0.1 and waiting for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool

from service.kartapay.client import KartaPayClient
from service.store.jobs import deserialize, serialize
from service.store.server import free_port


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int | None = None, **config: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with a real uvicorn server on 127.0.0.1; yield its base URL."""
    port = port or free_port()
    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", **config
    )
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, interval_s: float = 0.02
) -> None:
    """Wait until ``predicate`` is true; fail the test when it does not become true in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


def start_kartahook(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``kartahook ARGS`` as a real process with ``env`` added, its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kartahook.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_worker(
    redis_url: str, kartapay_url: str, token: str, log: Path, *args: str, **settings: str
) -> subprocess.Popen[bytes]:
    """Start ``kartahook worker ARGS`` against the tests' Redis and a KartaPay API (the
    sandbox), with ``settings`` as ``KARTAHOOK_<NAME>`` variables."""
    env = {
        "KARTAHOOK_REDIS_URL": redis_url,
        "KARTAHOOK_KARTAPAY_URL": kartapay_url,
        "KARTAHOOK_KARTAPAY_TOKEN": token,
        **{f"KARTAHOOK_{name.upper()}": value for name, value in settings.items()},
    }
    return start_kartahook(["worker", *args], env, log)


async def exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for ``process`` to exit, without blocking the loop; killed if it outlives
    ``timeout_s`` (then ``subprocess.TimeoutExpired`` is raised)."""
    try:
        return await asyncio.to_thread(process.wait, timeout_s)
    finally:
        if process.poll() is None:
            process.kill()


@contextlib.asynccontextmanager
async def arq_pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    """An arq pool with the project's JSON serializer on the tests' Redis."""
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize
    )
    try:
        yield pool
    finally:
        await pool.aclose()


async def completed_payments(client: KartaPayClient, count: int = 1) -> list[str]:
    """Create and submit ``count`` payments in the sandbox; their ids, once all are completed."""
    ids = []
    for _ in range(count):
        record = await client.create({"purchase": {"total": {"value": "10.00", "currency": "EUR"}}})
        await client.submit(record.id, "STR")
        ids.append(record.id)

    async def all_completed() -> bool:
        statuses = [(await client.get(payment_id)).status for payment_id in ids]
        return all(status == "completed" for status in statuses)

    await wait_for(all_completed, timeout_s=20)
    return ids


@contextlib.asynccontextmanager
async def serve_listeners(
    settings: Any, sources: Any = None, **config: Any
) -> AsyncIterator[tuple[str, str]]:
    """Serve what ``kartahook serve`` serves: one uvicorn server on two sockets of 127.0.0.1,
    the public one and the admin one (``create_server_app``); yield (public URL, admin URL)."""
    import socket

    from service.api.app import create_server_app

    sockets = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sockets.append(sock)
    public_port, admin_port = (sock.getsockname()[1] for sock in sockets)
    app = create_server_app(settings, admin_port, sources)
    cfg = uvicorn.Config(
        app, host="127.0.0.1", log_config=None, access_log=False, lifespan="on", **config
    )
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}"
    finally:
        server.should_exit = True
        await task
        for sock in sockets:
            sock.close()
