"""``kartahook status``: backlog, dead letters, subscriber health and the workers' heartbeat,
read straight from Redis (``--redis-url``, else ``KARTAHOOK_REDIS_URL``, else the Redis of a
running ``kartahook run``, from ``var/run.json``). ``--json`` for scripts.

Exits 0 when healthy, 1 when something needs attention: no worker heartbeat, a subscriber
disabled or with an open breaker, dead letters or stuck payments present; 2, with one line on
stderr, when Redis cannot be read (bad URL, unreachable, refused credentials).
``redis+sentinel://`` URLs work as everywhere else (``service.store.client``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

from kartahook.run_state import DEFAULT_VAR_DIR, live_run_state
from service.settings import Settings
from service.store.client import check_url, error_line, redis_client
from service.store.status import snapshot

STATUS_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        help="default KARTAHOOK_REDIS_URL, else that of a running `kartahook run` (run.json)",
    )
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=DEFAULT_VAR_DIR,
        help="where a running `kartahook run` keeps run.json (default ./var)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


async def _read(url: str, queue_name: str) -> dict[str, Any]:
    client = redis_client(
        url, socket_timeout=STATUS_TIMEOUT_S, socket_connect_timeout=STATUS_TIMEOUT_S
    )
    try:
        return await snapshot(client, queue_name)
    finally:
        await client.aclose()


def problems(state: dict[str, Any]) -> list[str]:
    """What needs an operator's attention, one line each."""
    found = []
    if not state["worker_health"]:
        found.append("no worker heartbeat (is a worker running?)")
    for kind, count in state["dead_letters"].items():
        if count:
            found.append(f"{count} dead-lettered {kind} (kartahook dlq --kind {kind} list)")
    if state["payments"]["stuck"]:
        found.append(
            f"{state['payments']['stuck']} payments stuck not terminal (GET /admin/payments/stuck)"
        )
    for sub in state["subscribers"]:
        if not sub["enabled"]:
            found.append(f"subscriber {sub['id']} is disabled ({sub['disabled_reason'] or '-'})")
        elif sub["breaker"] == "open":
            found.append(f"subscriber {sub['id']}: circuit breaker open")
    return found


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.redis_url or settings.redis_url or live_run_state(args.var_dir).get("redis_url")
    if not url:
        print(
            "kartahook status: set KARTAHOOK_REDIS_URL, pass --redis-url, or start `make run`",
            file=sys.stderr,
        )
        return 2
    try:
        check_url(url)
    except ValueError as exc:  # the message names the problem, never a password
        print(f"kartahook status: bad Redis URL: {exc}", file=sys.stderr)
        return 2
    try:
        state = asyncio.run(_read(url, settings.queue_name))
    except (TimeoutError, RedisError, OSError) as exc:
        print(f"kartahook status: cannot read Redis: {error_line(exc)}", file=sys.stderr)
        return 2
    issues = problems(state)
    if args.json:
        sys.stdout.write(orjson.dumps({**state, "problems": issues}).decode() + "\n")
        return 1 if issues else 0
    backlog = state["backlog"]
    print(
        f"backlog: {backlog['ready']} ready (oldest {backlog['oldest_ready_age_s']} s), "
        f"{backlog['deferred']} deferred"
    )
    dead = state["dead_letters"]
    print(f"dead letters: {dead['events']} events, {dead['deliveries']} deliveries")
    payments = state["payments"]
    print(f"payments: {payments['converging']} converging, {payments['stuck']} stuck")
    print(f"worker heartbeat: {state['worker_health'] or 'none'}")
    for sub in state["subscribers"]:
        print(
            f"subscriber {sub['id']}: {'enabled' if sub['enabled'] else 'disabled'}, "
            f"breaker {sub['breaker']}, waiting {sub['waiting']}, in flight {sub['in_flight']}, "
            f"dead {sub['dead_letters']}"
        )
    for line in issues:
        print(f"attention: {line}")
    return 1 if issues else 0
