"""``kartahook serve``: the ingestion (and admin) API under uvicorn, with uvloop and httptools.

No uvicorn access log (the app writes one structured line per request). Proxy headers are
handled inside the app, trusted only from ``KARTAHOOK_TRUSTED_PROXIES``. SIGTERM drains:
uvicorn stops accepting, and requests in flight get ``--grace-period`` seconds to finish.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Any

APP_FACTORY = "service.api.app:create_app_from_env"
HTTP_PROTOCOL = "service.api.http_protocol:KartahookHttpProtocol"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--grace-period", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM"
    )


def uvicorn_options(host: str, port: int, workers: int, grace_period_s: float) -> dict[str, Any]:
    """The uvicorn settings every kartahook HTTP server uses (the benchmark uses them too)."""
    return {
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        # httptools, with a header-block limit, a header-read timeout, a connection cap, and
        # chunked trailers ignored (service/api/http_protocol.py).
        "http": HTTP_PROTOCOL,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "proxy_headers": False,  # handled in the app, from trusted addresses only
        "server_header": False,
        "date_header": False,
        "backlog": 2048,
        "timeout_graceful_shutdown": grace_period_s,
    }


def serve(app: str, options: dict[str, Any]) -> None:
    """Run uvicorn on the factory ``app`` (``module:function``) with ``options``."""
    import uvicorn

    made_dir: str | None = None
    if options.get("workers", 1) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes: metrics are aggregated through files (service.metrics).
        made_dir = tempfile.mkdtemp(prefix="kartahook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    try:
        uvicorn.run(app, factory=True, **options)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    from service.logging import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.redis_url:
        import structlog

        structlog.get_logger("kartahook.serve").error(
            "KARTAHOOK_REDIS_URL is not set; use `kartahook run` for an embedded Redis"
        )
        return 2
    serve(APP_FACTORY, uvicorn_options(args.host, args.port, args.workers, args.grace_period))
    return 0
