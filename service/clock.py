"""The wall clock in the unit Redis scores and event timestamps use: Unix milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The current time as whole Unix milliseconds."""
    return time.time_ns() // 1_000_000


__all__ = ["now_ms"]
