"""``kartahook worker``: run one arq worker (processing and fan-out).

SIGTERM drains it: no new job is taken, jobs in flight get ``KARTAHOOK_WORKER_DRAIN_S`` to
finish, and whatever is still running then goes back to the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from service.logging import configure_logging
from service.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    parser.add_argument("--host", default=None, help="address of the /metrics server")
    parser.add_argument("--port", type=int, default=None, help="serve /metrics on this port")
    parser.add_argument("--max-jobs", type=int, default=None, help="jobs run at once")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    updates: dict[str, object] = {}
    if args.host is not None:
        updates["worker_metrics_host"] = args.host
    if args.port is not None:
        updates["worker_metrics_port"] = args.port
    if args.max_jobs is not None:
        updates["worker_max_jobs"] = args.max_jobs
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_format, settings.log_level)

    from redis.exceptions import RedisError

    from service.store.client import error_line
    from workers.main import build_worker

    loop = uvloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if not settings.redis_url:
            print("kartahook worker: KARTAHOOK_REDIS_URL is not set", file=sys.stderr)
            return 2
        try:
            worker = build_worker(settings, burst=args.burst)
        except ValueError as exc:  # a malformed URL; the message never repeats a password
            print(f"kartahook worker: bad Redis URL: {exc}", file=sys.stderr)
            return 2
        try:
            worker.run()
        except (RedisError, OSError) as exc:  # Redis unreachable, or refused the credentials
            print(f"kartahook worker: cannot use Redis: {error_line(exc)}", file=sys.stderr)
            return 2
    finally:
        loop.close()
    return 0
