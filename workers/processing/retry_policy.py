"""When to fetch a payment again after the KartaPay API failed to answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.settings import Settings


@dataclass(frozen=True, slots=True)
class FetchRetryPolicy:
    """Exponential backoff with jitter, bounded by a maximum age of the hint."""

    base_s: float = 1.0
    cap_s: float = 300.0
    max_age_s: float = 24 * 3600.0
    not_found_tries: int = 5
    not_found_delay_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchRetryPolicy:
        return cls(
            base_s=settings.process_backoff_base_s,
            cap_s=settings.process_backoff_cap_s,
            max_age_s=settings.process_max_age_s,
            not_found_tries=settings.process_not_found_tries,
            not_found_delay_s=settings.process_not_found_delay_s,
        )

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Delay before try ``attempt + 1``: full-range jitter over half to all of the step,
        never shorter than the server's ``Retry-After``."""
        step = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))
        delay = step * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s * 4))
        return delay

    def not_found_delay(self, attempt: int) -> float:
        """Delay after a 404: the API may not know a new payment yet."""
        return min(self.cap_s, self.not_found_delay_s * 2.0 ** min(attempt, 32))
