"""The :class:`workers.delivery.Deliveries` that processing is given: delivery's message body,
its breaker jitter, and :func:`workers.delivery.runner.deliver_now` over this worker's fan-out."""

from __future__ import annotations

from collections.abc import Sequence

from service.clock import now_ms
from service.domain.events import Transition
from service.store.delivery_state import Acquired
from workers.delivery.message import delivery_body
from workers.delivery.runner import FanoutDeps, deliver_now
from workers.delivery.schedule import breaker_wake_jitter_ms


class FanoutHandoff:
    """Deliveries over ``deps`` (None: no fan-out in this process, nothing sent at once)."""

    def __init__(self, deps: FanoutDeps | None, breaker_cooldown_s: float) -> None:
        self._deps = deps
        self._breaker_cooldown_s = breaker_cooldown_s

    @classmethod
    def from_deps(cls, deps: FanoutDeps) -> FanoutHandoff:
        return cls(deps, deps.settings.delivery_breaker_cooldown_s)

    def body_for(self, transition: Transition) -> bytes:
        return delivery_body(transition)

    def open_jitter_ms(self) -> int:
        return breaker_wake_jitter_ms(self._breaker_cooldown_s)

    def send_until(self, job_started: float, job_timeout_s: float) -> float:
        deps = self._deps
        if deps is None or deps.stopping.is_set():
            return 0.0
        return deps.attempts_until(job_started, job_timeout_s)

    async def send_started(self, started: Sequence[Acquired], until: float) -> None:
        if self._deps is not None and started:
            await deliver_now(self._deps, started, until)

    async def resume(self, subscriber_ids: Sequence[str]) -> int:
        if self._deps is None:
            return 0
        return await self._deps.store.resume(subscriber_ids, now_ms())
