"""The retry schedule: default steps, horizon, jitter bounds, Retry-After."""

from __future__ import annotations

import random

from service.settings import Settings
from workers.delivery.schedule import RetrySchedule, build_delays


def test_default_schedule_runs_about_three_days() -> None:
    """Defaults: 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 2 h, 4 h, 8 h, then 12 h until ~3 days."""
    schedule = RetrySchedule.from_settings(Settings())
    assert schedule.delays_s[:9] == (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)
    assert set(schedule.delays_s[9:]) == {43_200}
    total_h = sum(schedule.delays_s) / 3600
    assert 72 <= total_h < 72 + 12
    assert schedule.max_attempts == len(schedule.delays_s) + 1


def test_jitter_stays_within_twenty_percent() -> None:
    """Every delay is within ±20% of its step, and the spread is actually used."""
    schedule = RetrySchedule(delays_s=(10.0,), jitter=0.2)
    rng = random.Random(1)
    delays = [schedule.next_delay(1, None, rng) for _ in range(500)]
    assert all(d is not None and 8.0 <= d <= 12.0 for d in delays)
    assert max(d for d in delays if d) - min(d for d in delays if d) > 3


def test_schedule_is_spent_after_its_last_step() -> None:
    """After len(delays) failed attempts there is no next attempt."""
    schedule = RetrySchedule(delays_s=build_delays([1, 2], 0, 0), jitter=0)
    assert [schedule.next_delay(n) for n in (1, 2, 3)] == [1, 2, None]


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    """Retry-After longer than the step is honoured, up to retry_after_max_s."""
    schedule = RetrySchedule(delays_s=(5.0,), jitter=0, retry_after_max_s=60)
    assert schedule.next_delay(1, 1) == 5
    assert schedule.next_delay(1, 30) == 30
    assert schedule.next_delay(1, 10_000) == 60


def test_a_short_repeat_over_a_long_horizon_is_built_in_linear_time() -> None:
    """A 3 s repeat over the 3-day horizon (86,000+ delays) is built, every delay counted once:
    the schedule's length is what the horizon needs, neither more nor less."""
    delays = build_delays([5.0], repeat_s=3.0, horizon_s=259_200)
    assert len(delays) == 1 + (259_200 - 5) // 3 + 1
    assert sum(delays[:-1]) < 259_200 <= sum(delays)
