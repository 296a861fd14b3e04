"""Prometheus metrics of the service: one registry, the metric objects, and their exposition text
(served by :mod:`service.api.metrics_route`).

Metrics live at module level on :data:`REGISTRY` (not the global default registry), so importing
this module twice in tests never registers a metric twice. Add new metrics here, next to these.

With several uvicorn worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` before the processes
start (``kartahook serve --workers N`` does); ``/metrics`` then aggregates every process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.store.redis_config import LOW_GAUGE_HELP, LOW_GAUGE_NAME

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter(
    "kartahook_webhooks",
    "Inbound webhook requests by source and outcome (accepted, duplicate, or why refused).",
    ["source", "outcome"],
    registry=REGISTRY,
)
ACK_SECONDS = Histogram(
    "kartahook_ack_seconds",
    "Time from request start to the answer of a webhook that reached its source.",
    ["source"],
    buckets=(0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
REDIS_WAIT_SHORT = Counter(
    "kartahook_ingest_wait_short_total",
    "Ingestion batches answered 503 because WAIT saw fewer replicas than "
    "KARTAHOOK_REDIS_MIN_REPLICAS.",
    registry=REGISTRY,
)

ADMIN_REFUSALS = Counter(
    "kartahook_admin_refusals",
    "Admin API requests refused, by status and error code (bad token, bad parameter, unknown "
    "id, ...).",
    ["status", "error"],
    registry=REGISTRY,
)

REDIS_BATCH_SIZE = Histogram(
    "kartahook_ingest_batch_size",
    "Event writes sent to Redis in one pipeline by the ingestion batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)

REDIS_SETTING_LOW = Gauge(
    LOW_GAUGE_NAME,
    LOW_GAUGE_HELP,
    ["setting"],
    multiprocess_mode="max",
    registry=REGISTRY,
)


class WebhookMetrics:
    """``kartahook_webhooks_total`` and ``kartahook_ack_seconds`` for the ingestion hot path.

    Updates are gathered in a dict and a list during one event-loop turn and applied by one
    callback at its end: one ``inc(n)`` per (source, outcome) instead of one locked ``inc()``
    per request, and no ``labels()`` lookups (children are cached). Outside a running loop each
    update is applied at once. A scrape sees every request answered in an earlier loop turn.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._acks: list[tuple[str, float]] = []
        self._scheduled = False
        self._counters: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def count(self, source: str, outcome: str) -> None:
        """One more webhook of ``source`` with ``outcome``."""
        key = (source, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        if not self._scheduled:
            self._schedule_flush()

    def observe_ack(self, source: str, seconds: float) -> None:
        """The time a webhook of ``source`` took from arrival to answer."""
        self._acks.append((source, seconds))
        if not self._scheduled:
            self._schedule_flush()

    def flush(self) -> None:
        """Apply every pending update to the metrics now."""
        self._scheduled = False
        counts, self._counts = self._counts, {}
        acks, self._acks = self._acks, []
        for key, increment in counts.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = WEBHOOKS.labels(*key)
            counter.inc(increment)
        for source, seconds in acks:
            histogram = self._latency.get(source)
            if histogram is None:
                histogram = self._latency[source] = ACK_SECONDS.labels(source)
            histogram.observe(seconds)

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type, aggregated across processes when configured."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
