"""The convergence loop of a worker: every ``converge_poll_s`` it queues the convergence checks
that are due (``converge_due.lua`` through :class:`service.store.converge.ConvergeStore`).

A plain task of each worker process, not an arq job: the script is atomic and moves every
payment it takes to its next check time, so any number of workers can run it at once and a
check is queued once; there is no job that could be lost or doubled across restarts, and a
sub-second poll (which arq's ``cron_jobs`` cannot express) keeps the compressed schedules of the
tests exact. A full batch is followed at once by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisError

from service.settings import Settings
from service.store.converge import ConvergeStore
from workers import metrics

log = structlog.get_logger("kartahook.converge")

JOB = "converge_due"


class Converger:
    """Runs :meth:`ConvergeStore.queue_due` every ``poll_s`` until stopped."""

    def __init__(
        self, store: ConvergeStore, poll_s: float, batch: int, stopping: asyncio.Event
    ) -> None:
        self._store = store
        self._poll_s = poll_s
        self._batch = batch
        self._stopping = stopping
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, store: ConvergeStore, settings: Settings, stopping: asyncio.Event
    ) -> Converger:
        return cls(store, settings.converge_poll_s, settings.converge_batch, stopping)

    async def run_once(self) -> int:
        """Queue the due checks (one batch); how many were queued."""
        queued = await self._store.queue_due(self._batch)
        if queued:
            metrics.CONVERGENCE_CHECKS.inc(len(queued))
            log.info("convergence_checks_queued", count=len(queued))
        return len(queued)

    async def run(self) -> None:
        while not self._stopping.is_set():
            full = False
            try:
                full = await self.run_once() >= self._batch
            except (RedisError, OSError) as exc:
                log.warning("convergence_redis_unavailable", error=type(exc).__name__)
            except Exception as exc:  # a bug must not end the loop: logged, counted, retried
                metrics.UNEXPECTED_ERRORS.labels(JOB).inc()
                log.exception("convergence_error", error=type(exc).__name__)
            if full:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="kartahook-converge")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
