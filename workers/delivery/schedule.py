"""The retry schedule of deliveries: fixed steps, then a repeating step up to a horizon, with
jitter, and ``Retry-After`` honoured within bounds."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from service.settings import Settings


def build_delays(steps: Sequence[float], repeat_s: float, horizon_s: float) -> tuple[float, ...]:
    """The waits between attempts: ``steps``, then ``repeat_s`` until their sum reaches
    ``horizon_s`` (default: 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 2 h, 4 h, 8 h, then 12 h until
    about three days have passed)."""
    delays = [float(step) for step in steps]
    if any(step < 0 for step in delays):
        raise ValueError("retry delays must not be negative")
    if repeat_s > 0:
        total = sum(delays)  # kept running: summing the list each turn is quadratic
        while total < horizon_s:
            delays.append(float(repeat_s))
            total += repeat_s
    return tuple(delays)


def breaker_wake_jitter_ms(cooldown_s: float, rng: random.Random | None = None) -> int:
    """A random spread (ms) for the wake-up of a delivery parked behind an open breaker, so the
    parked deliveries of a subscriber do not all come back at the same instant."""
    return int((rng or random).uniform(0, min(1000.0, cooldown_s * 200)))


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    delays_s: tuple[float, ...]
    jitter: float = 0.2
    retry_after_max_s: float = 43_200

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(
            delays_s=build_delays(
                [float(step) for step in settings.delivery_retry_schedule_s],
                settings.delivery_retry_repeat_s,
                settings.delivery_retry_horizon_s,
            ),
            jitter=settings.delivery_jitter,
            retry_after_max_s=settings.delivery_retry_after_max_s,
        )

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def next_delay(
        self,
        attempts_made: int,
        retry_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` failures; None when spent.

        The scheduled step gets ±``jitter``; a ``Retry-After`` longer than that wins, capped at
        ``retry_after_max_s`` (a subscriber can slow us down, not stall a delivery forever).
        """
        if attempts_made < 1 or attempts_made > len(self.delays_s):
            return None
        step = self.delays_s[attempts_made - 1]
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        delay = step * (1 + spread)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay
