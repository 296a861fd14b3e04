"""The worker's small HTTP server: ``/healthz``, ``/readyz`` and ``/metrics`` on
``KARTAHOOK_WORKER_METRICS_HOST:PORT`` (``kartahook worker --port``), for probes and Prometheus.

It runs inside the worker's event loop, so ``/healthz`` answering proves the loop is not stuck;
``/readyz`` also needs Redis to answer. It never installs signal handlers: SIGTERM belongs to arq.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

READY_TIMEOUT_S = 1.0


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def probe_app(redis: Any) -> Starlette:
    """The probe routes over the worker's Redis pool."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await redis.ping()
        except (RedisError, OSError, TimeoutError):
            return JSONResponse({"status": "redis unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class ProbeServer:
    """Starts and stops the probe server as a task of the running loop."""

    def __init__(self, redis: Any, host: str, port: int) -> None:
        config = uvicorn.Config(
            probe_app(redis),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it (port taken, …)
                raise RuntimeError("the probe server stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
