"""What the per-source tests share: the app served with a given sources configuration."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from service.api.ingest.sources import Source, build_sources
from service.settings import Settings
from tests.support import serve_listeners

# The admin listener beside each public URL served here: /metrics is served there.
ADMIN_OF: dict[str, str] = {}


@contextlib.asynccontextmanager
async def served(
    redis_url: str,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    sources: Mapping[str, Source] | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on a real socket with these sources; a client whose base URL is it.

    uvicorn's own proxy headers are off, as ``kartahook serve`` has them: the app alone decides
    which ``X-Forwarded-For`` to trust (``trusted_proxies``)."""
    if sources is None:
        sources = build_sources(config or {})
    config = Settings(redis_url=redis_url, sources_file=None, **settings)
    async with (
        serve_listeners(config, sources, proxy_headers=False) as (url, admin),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        ADMIN_OF[url] = admin
        try:
            yield client
        finally:
            del ADMIN_OF[url]


def basic(username: str, password: str) -> str:
    """An ``Authorization: Basic`` header value."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def metric_value(client: httpx.AsyncClient, source: str, outcome: str) -> float:
    """``kartahook_webhooks_total{source,outcome}`` as ``/metrics`` shows it (0 when absent)."""
    text = (await client.get(ADMIN_OF[str(client.base_url).rstrip("/")] + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("kartahook_webhooks_total{") and (
            f'source="{source}"' in line and f'outcome="{outcome}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def request_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request log lines among ``structlog.testing.capture_logs`` entries."""
    return [entry for entry in logs if entry.get("event") == "request"]
