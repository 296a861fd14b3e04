"""Prometheus metrics of the service: one registry, the metric objects, and the ``/metrics`` route.

Metrics live at module level on :data:`REGISTRY` (not the global default registry), so importing
this module twice in tests never registers a metric twice. Add new metrics here, next to these.

With several uvicorn worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` before the processes
start (``kartahook serve --workers N`` does); ``/metrics`` then aggregates every process.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

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
REDIS_BATCH_SIZE = Histogram(
    "kartahook_ingest_batch_size",
    "Event writes sent to Redis in one pipeline by the ingestion batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type, aggregated across processes when configured."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def metrics_endpoint(_: Request) -> Response:
    """``GET /metrics``."""
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
