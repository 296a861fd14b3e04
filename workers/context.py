"""The worker's resources, typed: one :class:`WorkerContext` under one key of arq's ``ctx``.

arq hands every job and hook its ``ctx`` dict; arq's own keys (``redis``, ``job_id``,
``job_try``) stay there and are read there. Everything kartahook puts into it lives in the one
:class:`WorkerContext` at ``ctx[CTX_KEY]``: :func:`workers.main.build_worker` creates it with the
settings (and the test seams), ``on_startup`` fills in the rest, jobs read it with
:func:`worker_context`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from service.errors import KartahookError
from service.settings import Settings

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from service.kartapay.client import KartaPayClient
    from service.store.batcher import ScriptBatcher
    from service.store.dead_letters import EventDeadLetters
    from service.store.history import HistoryStore
    from service.store.leases import Leases
    from service.store.subscribers import SubscriberCache
    from workers.delivery import Deliveries
    from workers.delivery.runner import FanoutDeps
    from workers.probe_server import ProbeServer
    from workers.processing.converge import Converger
    from workers.processing.processor import EventProcessor
    from workers.processing.retry_policy import FetchRetryPolicy

CTX_KEY = "kartahook"


class WorkerNotStarted(KartahookError):
    """A job needed a resource that this worker's ``on_startup`` did not build."""


@dataclass
class WorkerContext:
    """Everything one worker process holds, built once by ``on_startup``.

    ``settings`` and the transport seams are given when the worker is built; the rest is
    ``None`` until the startup of its side (processing, delivery, probes) has run.
    """

    settings: Settings
    kartapay_transport: httpx.AsyncBaseTransport | None = None
    """Test seam: the transport of the KartaPay client (None: the network)."""
    delivery_transport: httpx.AsyncBaseTransport | None = None
    """Test seam: the transport deliveries are posted through (None: the network)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on SIGTERM/SIGINT: jobs in flight begin no more delivery attempts of their own."""

    redis: ArqRedis | None = None
    subscribers: SubscriberCache | None = None
    """The worker's one copy of the subscriber registry (processing and delivery share it)."""
    kartapay: KartaPayClient | None = None
    retry_policy: FetchRetryPolicy | None = None
    event_dead_letters: EventDeadLetters | None = None
    processor: EventProcessor | None = None
    history: HistoryStore | None = None
    """Where processing records each run for the admin API's history (``service.store.history``)."""
    script_batcher: ScriptBatcher | None = None
    """The worker's pipelined connection for the script calls of concurrent jobs: history's
    records and deliveries' finishes (``workers.main.on_startup``; None: direct calls)."""
    converger: Converger | None = None
    """The convergence loop (``workers.processing.converge``), started with processing."""
    fanout: FanoutDeps | None = None
    """Delivery's resources (``workers.delivery.job.on_startup``)."""
    deliveries: Deliveries | None = None
    """What processing hands its transitions and started deliveries to."""
    probe_server: ProbeServer | None = None
    leases: Leases | None = None
    """The fetch locks and delivery slots this worker's runs hold, which its heartbeat renews
    (``workers.main.ResilientWorker``), with the in-progress keys of its jobs."""

    def arq_redis(self) -> ArqRedis:
        if self.redis is None:
            raise WorkerNotStarted("the worker's Redis pool is not set: on_startup did not run")
        return self.redis


def worker_context(ctx: dict[str, Any]) -> WorkerContext:
    """The :class:`WorkerContext` in arq's ``ctx``, with ``redis`` taken from arq's key."""
    context = ctx.get(CTX_KEY)
    if not isinstance(context, WorkerContext):
        raise WorkerNotStarted(f"ctx[{CTX_KEY!r}] holds no WorkerContext: see build_worker")
    if context.redis is None and ctx.get("redis") is not None:
        context.redis = ctx["redis"]
    return context
