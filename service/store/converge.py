"""Convergence in Redis: the schedule of fetches that makes a payment reach its final state even
when its last webhook never comes (docs/processing.md "Convergence").

Keys (:mod:`service.store.layout`):

- ``CONVERGE``  zset: payment id -> when its next check is due (ms). One member per payment
  recorded in a non-terminal state.
- ``STUCK``     zset: payment id -> when it was found still not terminal at the horizon (ms);
  capped at :attr:`ConvergePlan.stuck_max` (the oldest go first).
- the payment's state hash (``PAYMENT_STATE``) holds ``cv_first`` (its first non-terminal
  record, ms: the horizon counts from it) and ``cv_step`` (checks queued so far).

``payment_record.lua`` starts, pushes back and ends a payment's schedule in the same atomic
step that records its state (:class:`service.store.payments.PaymentStateStore` with a plan);
``converge_due.lua`` (:meth:`ConvergeStore.queue_due`) queues the checks that are due, each a
``process_event`` job whose hint has source :data:`CONVERGENCE_SOURCE`. Every operation is
O(log n) in the number of scheduled payments, times the payments it touches: nothing scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.settings import Settings
from service.store.layout import CONVERGE, CONVERGENCE_SOURCE, STUCK, payment_state_key
from service.store.scripts import Script

DUE = Script.load("converge_due")

__all__ = ["CONVERGENCE_SOURCE", "ConvergePlan", "ConvergeStore", "StuckList", "StuckPayment"]


@dataclass(frozen=True, slots=True)
class ConvergePlan:
    """When a non-terminal payment is fetched again: after each delay of ``schedule_s`` in turn,
    then every ``repeat_s``, until ``horizon_s`` after its first non-terminal record; then it is
    stuck."""

    schedule_s: Sequence[float] = (60, 300, 1800, 7200, 21600)
    repeat_s: float = 86_400
    horizon_s: float = 259_200
    stuck_max: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConvergePlan:
        return cls(
            schedule_s=tuple(float(s) for s in settings.converge_schedule_s),
            repeat_s=settings.converge_repeat_s,
            horizon_s=settings.converge_horizon_s,
            stuck_max=settings.converge_stuck_max,
        )

    def delay_s(self, step: int) -> float:
        """The delay after check number ``step`` (0: after the first record)."""
        return self.schedule_s[step] if step < len(self.schedule_s) else self.repeat_s

    def encode(self) -> str:
        """The plan as the Lua scripts read it (``lib/converge.lua`` ``converge_plan``)."""
        values = [self.horizon_s, self.repeat_s, *self.schedule_s]
        ms = [max(1, round(v * 1000)) for v in values]
        return ",".join(str(v) for v in [ms[0], ms[1], self.stuck_max, *ms[2:]])


@dataclass(frozen=True, slots=True)
class StuckPayment:
    """A payment still not terminal at the horizon."""

    payment_id: str
    stuck_ms: int
    status: str
    first_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "status": self.status,
            "stuck_ms": self.stuck_ms,
            "first_seen_ms": self.first_ms,
        }


class ConvergeStore:
    """The due checks, and the stuck list as the admin API shows it."""

    def __init__(self, redis: Redis, queue_name: str, plan: ConvergePlan) -> None:
        self._redis = redis
        self._queue = queue_name
        self._plan = plan
        self._encoded = plan.encode()

    async def queue_due(self, batch: int) -> list[str]:
        """Queue the checks of up to ``batch`` payments that are due; their ids."""
        reply = await DUE(self._redis, [CONVERGE, self._queue], [batch, self._encoded])
        return [pid.decode() if isinstance(pid, bytes) else str(pid) for pid in reply]

    async def scheduled(self) -> int:
        """How many payments are scheduled for a check."""
        return int(await self._redis.zcard(CONVERGE))


class StuckList:
    """``STUCK``, read by the admin API (no plan needed)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def count(self) -> int:
        return int(await self._redis.zcard(STUCK))

    async def page(self, offset: int, limit: int) -> list[StuckPayment]:
        """Stuck payments, longest stuck first."""
        rows = await self._redis.zrange(STUCK, offset, offset + limit - 1, withscores=True)
        found = []
        for raw, score in rows:
            pid = raw.decode() if isinstance(raw, bytes) else str(raw)
            state = await self._redis.hmget(payment_state_key(pid), ["status", "cv_first"])  # type: ignore[misc]
            status, first = (v.decode() if isinstance(v, bytes) else v for v in state)
            found.append(StuckPayment(pid, int(score), status or "", int(first) if first else None))
        return found
