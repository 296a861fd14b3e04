"""The one ``now_ms`` (service.clock): Unix milliseconds, used by service, workers and bench."""

from __future__ import annotations

import time

from service.clock import now_ms


def test_now_ms_is_whole_unix_milliseconds() -> None:
    """now_ms() is an int within the wall clock's bounds, in milliseconds (not s or µs)."""
    before = time.time()
    value = now_ms()
    after = time.time()
    assert isinstance(value, int)
    assert int(before * 1000) - 1 <= value <= int(after * 1000) + 1


def test_delivery_and_ingest_use_the_one_clock() -> None:
    """The delivery runner and the ingest endpoint take the shared now_ms, not a copy."""
    from service.api.ingest import endpoint
    from workers.delivery import runner

    assert runner.now_ms is now_ms
    assert endpoint.now_ms is now_ms
