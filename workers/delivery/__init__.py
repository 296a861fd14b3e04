"""Delivery (fan-out): signed, ordered, idempotent delivery of transitions to subscribers.

Processing uses delivery only through what this module exports:

- :class:`Deliveries`, the interface processing hands its transitions to: the body each
  delivery of a transition sends, the jitter of a wake-up behind an open breaker (the
  compare-and-set script parks such deliveries), and the sending of the deliveries that the
  compare-and-set has just created and started, and their resumption after a crash;
- :data:`StartedDelivery`, one such started delivery (what the script returns);
- :class:`FanoutHandoff`, the implementation over this worker's fan-out, and
  :func:`bodies_only`, the same without a fan-out to send with (nothing is sent at once; the
  deliveries' jobs do it).

The rest (``job``, ``runner``, ``client``, ``message``, ``schedule``) is delivery's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.domain.events import Transition
from service.store.delivery_state import Acquired
from workers.delivery.handoff import FanoutHandoff

StartedDelivery = Acquired
"""A delivery that processing's compare-and-set created and started (its slot taken)."""


class Deliveries(Protocol):
    """What processing needs from delivery."""

    def body_for(self, transition: Transition) -> bytes:
        """The bytes every delivery of ``transition`` sends, on every attempt and replay."""
        ...

    def open_jitter_ms(self) -> int:
        """A random spread (ms) for the wake-up of a delivery parked behind an open breaker."""
        ...

    def send_until(self, job_started: float, job_timeout_s: float) -> float:
        """The ``time.monotonic()`` before which a job started at ``job_started`` may send
        deliveries itself; 0.0 when it may not (no fan-out here, or the worker is draining)."""
        ...

    async def send_started(self, started: Sequence[StartedDelivery], until: float) -> None:
        """Send the started deliveries (then their lines' next ones, while before ``until``).
        Never raises for a delivery: their jobs, deferred by the lease, are the safety net."""
        ...

    async def resume(self, subscriber_ids: Sequence[str]) -> int:
        """After a crash (a job run again because its worker died): make the safety-net jobs of
        the attempts that worker was sending to ``subscriber_ids`` due when their slot's lease
        ends, not after the hold. How many were made due earlier."""
        ...


def bodies_only(breaker_cooldown_s: float = 60.0) -> Deliveries:
    """:class:`Deliveries` without a fan-out: bodies and jitter, nothing sent at once."""
    return FanoutHandoff(None, breaker_cooldown_s)


__all__ = ["Deliveries", "FanoutHandoff", "StartedDelivery", "bodies_only"]
