"""``kartahook serve``: the ingestion and admin API under uvicorn, with uvloop and httptools.

Two listeners, one uvicorn server: the public one (``--host``/``--port``) serves the webhooks
and the probes only; the admin one (``--admin-host``/``--admin-port``, ``KARTAHOOK_ADMIN_HOST`` /
``KARTAHOOK_ADMIN_PORT``, default port 8090 on the public host) serves ``/admin/…``, ``/metrics``
and the probes. Both sockets are bound here and handed to uvicorn, so each of ``--workers N``
processes accepts on both, the app's one lifespan (one Redis client) serves both, and SIGTERM
drains both: uvicorn stops accepting, and requests in flight get ``--grace-period`` seconds.

No uvicorn access log (the app writes one structured line per request). Proxy headers are
handled inside the app, trusted only from ``KARTAHOOK_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
from typing import Any

APP_FACTORY = "service.api.app:create_app_from_env"
HTTP_PROTOCOL = "service.api.http_protocol:KartahookHttpProtocol"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="public port: webhooks, probes")
    parser.add_argument(
        "--admin-host",
        default=None,
        help="address of the admin listener (default: KARTAHOOK_ADMIN_HOST, else --host)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="admin port: /admin, /metrics, probes (default: KARTAHOOK_ADMIN_PORT, else 8090)",
    )
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


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that uvicorn's worker processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app: str, options: dict[str, Any], admin: tuple[str, int] | None = None) -> bool:
    """Run uvicorn on the factory ``app`` (``module:function``) with ``options``; with
    ``admin`` = (host, port), on that second socket too. False when the server did not start."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    made_dir: str | None = None
    if options.get("workers", 1) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes: metrics are aggregated through files (service.metrics).
        made_dir = tempfile.mkdtemp(prefix="kartahook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    config = uvicorn.Config(app, factory=True, **options)
    server = uvicorn.Server(config)
    sockets: list[socket.socket] = []
    try:
        sockets.append(bind(config.host, config.port, config.backlog))
        if admin is not None:
            sockets.append(bind(admin[0], admin[1], config.backlog))
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
            return True
        server.run(sockets=sockets)
        return server.started
    finally:
        for sock in sockets:
            sock.close()
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import structlog

    from service.logging import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.redis_url:
        structlog.get_logger("kartahook.serve").error(
            "KARTAHOOK_REDIS_URL is not set; use `kartahook run` for an embedded Redis"
        )
        return 2
    admin_host = args.admin_host or settings.admin_host or args.host
    admin_port = settings.admin_port if args.admin_port is None else args.admin_port
    log = structlog.get_logger("kartahook.serve")
    if admin_port == args.port or not 0 < admin_port < 65536:
        # The app tells the listeners apart by port, so they need two distinct fixed ports.
        log.error("the admin port must be a fixed port other than the public port",
                  port=args.port, admin_port=admin_port)  # fmt: skip
        return 2
    # The app factory runs in each worker process and reads the admin port from there.
    os.environ["KARTAHOOK_ADMIN_PORT"] = str(admin_port)
    options = uvicorn_options(args.host, args.port, args.workers, args.grace_period)
    log.info("listening", public=f"{args.host}:{args.port}", admin=f"{admin_host}:{admin_port}")
    try:
        started = serve(APP_FACTORY, options, admin=(admin_host, admin_port))
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        return 1
    return 0 if started else 1
