"""The arq worker: processing and fan-out in one stock ``arq.worker.Worker``.

``ctx`` carries every resource in one :class:`workers.context.WorkerContext` (settings, the
KartaPay client, the stores, the processor, the delivery client), built by ``on_startup``; there
are no import-time globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import httpx
import structlog
from arq.connections import ArqRedis
from arq.worker import Function, Worker
from redis.exceptions import RedisError

from service.clock import now_ms
from service.settings import Settings
from service.store.batcher import ScriptBatcher
from service.store.client import arq_redis, check_url
from service.store.jobs import deserialize, serialize
from service.store.layout import ARQ_EXPIRES_EXTRA_MS
from service.store.leases import Leases
from service.store.redis_config import check_memory_settings
from workers.context import CTX_KEY, WorkerContext, worker_context
from workers.delivery import job as fanout
from workers.metrics import REDIS_SETTING_LOW
from workers.probe_server import ProbeServer
from workers.processing.job import processing_function, processing_shutdown, processing_startup

log = structlog.get_logger("kartahook.worker")

# Connecting at start: as arq's own create_pool (5 retries, 1 s apart, 1 s to connect).
CONNECT_TRIES = 6
CONNECT_RETRY_DELAY_S = 1.0
CONNECT_TIMEOUT_S = 1.0
# Deadline of a script call sent through the worker's pipelined connection (history records,
# delivery finishes): past it the call fails with RedisUnavailable, as a stalled Redis would
# otherwise hold the job until TCP gives up.
SCRIPT_BATCH_TIMEOUT_S = 5.0
# At shutdown, how long each Redis step (health-check key, on_shutdown, closing the pool) may take.
CLOSE_STEP_S = 3.0


class ResilientWorker(Worker):
    """arq's ``Worker``, but a Redis outage does not end it: a poll that fails is logged and
    tried again a second later, so the worker rides out a Redis restart or failover instead of
    exiting. Jobs cut off by the outage run again when their in-progress key (a lease) expires.

    Its Redis client is ``service.store.client.arq_redis(redis_url)`` (so a ``redis+sentinel://``
    URL works, Sentinel password included), made in ``main`` in place of arq's ``create_pool``
    unless a ``redis_pool`` is given.

    With ``lease_s``, a dead worker's jobs run again within seconds, not after arq's job timeout
    + 10 s: arq's in-progress key of a job is set for ``lease_s`` only (``job_timeout`` stays as
    long as it is), and a heartbeat task renews it every ``renew_s`` while the job runs, in the
    same round trip as the fetch locks and delivery slots this worker's runs hold
    (``WorkerContext.leases``, :mod:`service.store.leases`)."""

    def __init__(
        self,
        *,
        redis_url: str,
        lease_s: float | None = None,
        renew_s: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.redis_url = redis_url
        if self._pool is None:
            self.redis_settings = None  # the pool comes from service.store.client, not arq
        self.lease_s = lease_s
        self.renew_s = renew_s or (lease_s / 3 if lease_s else None)
        if lease_s is not None:
            # arq sets it to the longest function timeout + 10 s; the heartbeat keeps it alive.
            self.in_progress_timeout_s = lease_s

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await self.connect()
        heartbeat = None if self.lease_s is None else asyncio.create_task(self.heartbeat())
        try:
            await super().main()
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def heartbeat(self) -> None:
        """Renew, every ``renew_s``, the in-progress keys of the jobs running here and the
        leases this worker's runs hold, until cancelled."""
        assert self.lease_s is not None and self.renew_s is not None
        lease_ms = int(self.lease_s * 1000)
        while True:
            await asyncio.sleep(self.renew_s)
            context = self.ctx.get(CTX_KEY)
            leases = context.leases if isinstance(context, WorkerContext) else None
            if leases is None:
                leases = Leases(self.pool, self.queue_name, lease_ms)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            try:
                # A renewal that hangs (Redis failing over) must not hold up the next one.
                async with asyncio.timeout(self.lease_s):
                    renewed = await leases.renew(running, now_ms())
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("lease_renewal_failed", error=type(exc).__name__)
                continue
            for lease in renewed.lost:
                log.warning("lease_lost", kind=lease.kind, holder=lease.member)

    async def connect(self) -> ArqRedis:
        """The worker's pool from ``service.store.client`` (plain or Sentinel URL, Sentinel
        credentials included), once it answers PING; tried as arq's ``create_pool`` would."""
        pool = arq_redis(
            self.redis_url,
            job_serializer=self.job_serializer,
            job_deserializer=self.job_deserializer,
            default_queue_name=self.queue_name,
            expires_extra_ms=self.expires_extra_ms,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        for attempt in range(1, CONNECT_TRIES + 1):
            try:
                await pool.ping()
                return pool
            except (TimeoutError, RedisError, OSError) as exc:
                if attempt == CONNECT_TRIES:
                    await pool.aclose()
                    raise
                log.warning(
                    "worker_redis_unavailable",
                    error=type(exc).__name__,
                    retry_in_s=CONNECT_RETRY_DELAY_S,
                    tries_left=CONNECT_TRIES - attempt,
                )
                await asyncio.sleep(CONNECT_RETRY_DELAY_S)
        raise AssertionError("unreachable")

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """SIGTERM/SIGINT: besides arq's drain (no new jobs; those in flight get
        ``worker_drain_s``), tell the jobs in flight to begin no more delivery attempts of their
        own: what they would have chained is left to its jobs, for another worker."""
        context = self.ctx.get(CTX_KEY)
        if isinstance(context, WorkerContext):
            context.stopping.set()
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        """arq's close, each Redis step bounded: the jobs in flight have already been given
        their drain time; then the health-check key's removal and ``on_shutdown`` get
        :data:`CLOSE_STEP_S` each, and a Redis that does not answer (down, or stalled in a
        failover) is logged and left behind. So SIGTERM always ends the process, exit 0."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        try:
            async with asyncio.timeout(CLOSE_STEP_S):
                await self.pool.delete(self.health_check_key)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "worker_close_redis_unavailable", step="health_check", error=type(exc).__name__
            )
        if self.on_shutdown:
            try:
                async with asyncio.timeout(CLOSE_STEP_S):
                    await self.on_shutdown(self.ctx)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning(
                    "worker_close_redis_unavailable", step="on_shutdown", error=type(exc).__name__
                )
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_STEP_S):
                await self.pool.close(close_connection_pool=True)
        self._pool = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("worker_redis_unavailable", error=type(exc).__name__, retry_in_s=1.0)
            await asyncio.sleep(1.0)


async def on_startup(ctx: dict[str, Any]) -> None:
    """Build the resources of one worker process into its :class:`WorkerContext`: the pipelined
    script connection, fan-out, processing (which hands its deliveries to fan-out), and the
    probe server when a port is set; and check Redis's memory setting once (a warning when it
    is low, never a failure)."""
    context = worker_context(ctx)
    settings = context.settings
    await check_memory_settings(context.arq_redis(), REDIS_SETTING_LOW)
    context.leases = Leases(context.arq_redis(), settings.queue_name, settings.lease_ms)
    context.script_batcher = ScriptBatcher(context.arq_redis(), timeout_s=SCRIPT_BATCH_TIMEOUT_S)
    await fanout.delivery_startup(context)
    await processing_startup(context)
    if settings.worker_metrics_port is not None:
        probes = ProbeServer(
            context.arq_redis(), settings.worker_metrics_host, settings.worker_metrics_port
        )
        await probes.start()
        context.probe_server = probes


async def on_shutdown(ctx: dict[str, Any]) -> None:
    context = worker_context(ctx)
    probes, context.probe_server = context.probe_server, None
    if probes is not None:
        await probes.stop()
    await fanout.delivery_shutdown(context)
    await processing_shutdown(context)
    batcher, context.script_batcher = context.script_batcher, None
    if batcher is not None:
        await batcher.close()


def functions(settings: Settings) -> list[Function]:
    return [processing_function(settings), *fanout.functions(settings)]


def build_worker(
    settings: Settings,
    *,
    redis_url: str | None = None,
    burst: bool = False,
    handle_signals: bool = True,
    kartapay_transport: httpx.AsyncBaseTransport | None = None,
    delivery_transport: httpx.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> Worker:
    """A stock arq ``Worker`` with JSON jobs, tuned from ``settings``; its Redis client comes
    from ``service.store.client`` (``redis_url``, else ``settings.redis_url``). The transports,
    when given, replace the network for the KartaPay client and for deliveries (tests)."""
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("a Redis URL is needed: set KARTAHOOK_REDIS_URL")
    check_url(url)  # a malformed URL fails here, not at the first connection
    options: dict[str, Any] = {
        "functions": functions(settings),
        "queue_name": settings.queue_name,
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
        "ctx": {
            CTX_KEY: WorkerContext(
                settings,
                kartapay_transport=kartapay_transport,
                delivery_transport=delivery_transport,
            )
        },
    }
    options.update(overrides)
    return ResilientWorker(
        redis_url=url,
        lease_s=settings.worker_lease_s,
        renew_s=settings.lease_renew_s,
        **options,
    )
