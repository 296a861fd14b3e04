"""The arq worker: processing and fan-out in one stock ``arq.worker.Worker``.

``ctx`` carries every resource (settings, the KartaPay client, the stores, the processor, the
delivery client), built by ``on_startup``; there are no import-time globals.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from arq.worker import Function, Worker
from redis.exceptions import RedisError

from service.settings import Settings
from service.store.client import arq_redis_settings
from service.store.jobs import deserialize, serialize
from service.store.layout import ARQ_EXPIRES_EXTRA_MS
from workers.delivery import job as fanout
from workers.delivery.runner import STOPPING
from workers.probe_server import ProbeServer
from workers.processing.job import processing_function, processing_shutdown, processing_startup

log = structlog.get_logger("kartahook.worker")


class ResilientWorker(Worker):
    """arq's ``Worker``, but a Redis outage does not end it: a poll that fails is logged and
    tried again a second later, so the worker rides out a Redis restart or failover instead of
    exiting. Jobs cut off by the outage run again when their in-progress key expires."""

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT: besides arq's drain (no new jobs; those in flight get
        ``worker_drain_s``), tell the jobs in flight to begin no more delivery attempts of their
        own: what they would have chained is left to its jobs, for another worker."""
        stopping = self.ctx.get(STOPPING)
        if isinstance(stopping, asyncio.Event):
            stopping.set()
        super().handle_sig_wait_for_completion(signum)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("worker_redis_unavailable", error=type(exc).__name__, retry_in_s=1.0)
            await asyncio.sleep(1.0)


async def on_startup(ctx: dict[str, Any]) -> None:
    """Build the resources of one worker process into ``ctx``: processing, fan-out, and the
    probe server when a port is set."""
    settings: Settings = ctx["settings"]
    await processing_startup(ctx)
    await fanout.on_startup(ctx)
    if settings.worker_metrics_port is not None:
        probes = ProbeServer(
            ctx["redis"], settings.worker_metrics_host, settings.worker_metrics_port
        )
        await probes.start()
        ctx["probe_server"] = probes


async def on_shutdown(ctx: dict[str, Any]) -> None:
    probes: ProbeServer | None = ctx.pop("probe_server", None)
    if probes is not None:
        await probes.stop()
    await fanout.on_shutdown(ctx)
    await processing_shutdown(ctx)


def functions(settings: Settings) -> list[Function]:
    return [processing_function(settings), *fanout.functions(settings)]


def build_worker(
    settings: Settings,
    *,
    redis_url: str | None = None,
    burst: bool = False,
    handle_signals: bool = True,
    extra_ctx: dict[str, Any] | None = None,
    **overrides: Any,
) -> Worker:
    """A stock arq ``Worker`` with JSON jobs, tuned from ``settings``."""
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("a Redis URL is needed: set KARTAHOOK_REDIS_URL")
    options: dict[str, Any] = {
        "functions": functions(settings),
        "queue_name": settings.queue_name,
        "redis_settings": arq_redis_settings(url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_s,
        "health_check_interval": settings.worker_health_check_s,
        "job_timeout": settings.worker_job_timeout_s,
        "job_completion_wait": settings.worker_drain_s,
        "keep_result": 0,
        "expires_extra_ms": ARQ_EXPIRES_EXTRA_MS,
        "burst": burst,
        "handle_signals": handle_signals,
        "ctx": {"settings": settings, **(extra_ctx or {})},
    }
    options.update(overrides)
    return ResilientWorker(**options)
