"""The one ``Retry-After`` parser (RFC 9110 §10.2.3), for KartaPay answers and subscriber answers.

Callers apply their own caps (e.g. the delivery schedule's ``retry_after_max_s``).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import UTC

# delay-seconds: digits, and (leniently) a decimal fraction such as ``1.5``; no sign, no exponent.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds (``7``, ``1.5``) or an
    HTTP-date, measured from ``now`` (Unix seconds; default: the current time).

    A date in the past gives ``0.0``; a missing, empty, negative or unreadable value gives
    ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": the zone is not said; HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


__all__ = ["parse_retry_after"]
