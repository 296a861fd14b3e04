"""``kartahook run``: the whole pipeline on one machine, then a few demo payments.

Starts, through the one stack builder (:mod:`kartahook.stack`), in this order and each as
``python -m kartahook.cli <command>``: an embedded Redis (when ``KARTAHOOK_REDIS_URL`` is unset),
the demo subscriber, the service, a worker and the sandbox.
It waits until each is ready, prints what listens where, drives demo payments through their
lifecycle and shows the deliveries as they arrive. Ctrl-C or SIGTERM stops everything, last
started first; so does a process that fails to start or exits (its log's last lines are shown).

Everything it writes goes under ``--var-dir`` (``./var``): Redis data, one log per process,
the generated sources and subscribers files, and ``run.json`` (what runs where, no secrets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from kartahook.demo import ReceivedWatcher
from kartahook.stack import (
    SOURCE_NAMES,
    SOURCE_PLAN_CODES,
    SUBSCRIBER_PATH,
    WEBHOOK_MODES,
    DemoSubscriber,
    Stack,
)
from kartahook.supervisor import ChildFailed, Supervisor, port_is_free
from service.settings import Settings
from service.store.client import redacted_url
from service.store.server import free_port

DEFAULT_BASE_PORT = 8700
# Port of each component: the base port plus this offset.
PORT_OFFSETS = {"service": 0, "sandbox": 1, "subscriber": 2, "redis": 3, "admin": 4}
SUBSCRIBER_ID = "demo"  # its secret: $DEMO_SUBSCRIBER_WEBHOOK_SECRET in the subscribers file
# A worker with no health-check key yet is taken as ready after this many seconds.
WORKER_SETTLE_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="base port: service +0, sandbox +1, demo subscriber +2, Redis +3, "
        "the service's admin listener +4; "
        "0 picks free ports (default %(default)s)",
    )
    for name in PORT_OFFSETS:
        parser.add_argument(f"--{name}-port", type=int, help=f"port of the {name}")
    parser.add_argument(
        "--payments",
        type=int,
        default=6,
        help="demo payments to drive, each plan code in turn: 6 cover all (default %(default)s)",
    )
    parser.add_argument(
        "--webhooks",
        choices=WEBHOOK_MODES,
        default="both",
        help="what the sandbox sends: KartaPay's own webhooks, the plan's provider's, or both "
        "(default %(default)s)",
    )
    parser.add_argument("--no-demo", action="store_true", help="start everything, drive nothing")
    parser.add_argument("--demo-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds each process gets to stop"
    )
    parser.add_argument("--var-dir", type=Path, default=Path("var"), help="default ./var")


def choose_ports(args: argparse.Namespace) -> dict[str, int]:
    """One port per component: explicit, else base + offset when free, else any free port."""
    ports: dict[str, int] = {}
    for name, offset in PORT_OFFSETS.items():
        explicit = getattr(args, f"{name}_port")
        if explicit:
            ports[name] = explicit
            continue
        wanted = args.port + offset if args.port else 0
        if wanted and port_is_free(args.host, wanted):
            ports[name] = wanted
            continue
        if wanted:
            print(f"  port {wanted} ({name}) is taken: using a free port instead", flush=True)
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


def run_stack(args: argparse.Namespace, settings: Settings) -> Stack:
    """The stack ``kartahook run`` starts: one demo subscriber, the pipeline, the sandbox."""
    ports = choose_ports(args)
    demo = DemoSubscriber(SUBSCRIBER_ID, port=ports["subscriber"], name="demo-subscriber")
    return Stack(
        args.var_dir,
        host=args.host,
        ports={name: ports[name] for name in ("service", "admin", "sandbox", "redis")},
        demo_subscribers=[demo],
        token=settings.kartapay_token.get_secret_value(),
        redis_url=settings.redis_url or "",
        worker_settle_s=WORKER_SETTLE_S,
        webhooks=getattr(args, "webhooks", "both"),
        grace_s=args.grace,
        report=lambda line: print(line, flush=True),
    )


def subscriber_base_url(stack: Stack) -> str:
    """Where the demo subscriber answers (``GET /received``)."""
    return stack.demo_subscribers[0].base_url(stack.client_host)


def describe(stack: Stack) -> list[str]:
    pids = stack.pids()
    if stack.redis:
        rows = [("redis", redacted_url(stack.redis_url), "embedded, AOF on, data in var/redis")]
    else:
        rows = [("redis", redacted_url(stack.redis_url), "KARTAHOOK_REDIS_URL")]
    subscriber_url = subscriber_base_url(stack) + SUBSCRIBER_PATH
    rows.append(("demo-subscriber", subscriber_url, "GET /received lists deliveries"))
    if "service" in pids:
        rows.append(("service", stack.service_url, "/v1/webhooks/<source>, sources below"))
        rows.append(("service (admin)", stack.admin_url, "/admin, /metrics"))
    if "worker" in pids:
        rows.append(("worker", "-", f"arq worker, pid {pids['worker']}"))
    if "sandbox" in pids:
        rows.append(
            ("sandbox", stack.sandbox_url, f"KartaPay API; sends {stack.webhooks} webhooks")
        )
    lines = [f"  {name:<16} {where:<40} {what}" for name, where, what in rows]
    if "service" in pids:
        lines.append(f"  sources ({stack.var_dir / 'sources.yaml'}):")
        for source, code in SOURCE_PLAN_CODES.items():
            what = f"plan {code}" if code else "KartaPay's own webhooks"
            lines.append(f"    {source:<9} {stack.service_url}/v1/webhooks/{source:<9} {what}")
    return lines


def state(stack: Stack) -> dict[str, Any]:
    """``run.json``: what runs where. No secrets."""
    children = stack.pids()
    return {
        "pid": os.getpid(),
        "redis_url": redacted_url(stack.redis_url),
        "service_url": stack.service_url if "service" in children else None,
        "admin_url": stack.admin_url if "service" in children else None,
        "sandbox_url": stack.sandbox_url if "sandbox" in children else None,
        "subscriber_url": subscriber_base_url(stack),
        "webhook_url": stack.webhook_url,
        "children": children,
    }


def run(args: argparse.Namespace) -> int:
    # Absolute: redis-server changes into its data directory before it opens its log file.
    args.var_dir = args.var_dir.resolve()
    args.var_dir.mkdir(parents=True, exist_ok=True)
    other = running_elsewhere(args.var_dir)
    if other:
        print(f"kartahook run: another run (pid {other}) uses {args.var_dir}; stop it or give "
              "--var-dir", flush=True)  # fmt: skip
        return 1
    return asyncio.run(_run(args))


def running_elsewhere(var_dir: Path) -> int | None:
    """The pid of a live ``kartahook run`` that owns ``var_dir``, if any."""
    try:
        pid = int(json.loads((var_dir / "run.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if pid != os.getpid() else None


async def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    var_dir: Path = args.var_dir
    print(f"kartahook run: data and logs in {var_dir}/ (logs: {var_dir}/log/)", flush=True)
    stack = run_stack(args, settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            stack.supervisor.force = True
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    work = asyncio.create_task(_start_and_demo(args, stack, stop))
    stopper = asyncio.create_task(stop.wait())
    code = 0
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            code = work.result()
        else:
            print("\nstopping…", flush=True)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    except ChildFailed as exc:
        print(f"kartahook run: {exc}; last lines of {exc.child.log_path}:", flush=True)
        print(exc.child.log_tail(), flush=True)
        code = 1
    except (OSError, RuntimeError, TimeoutError) as exc:  # e.g. no redis-server, port taken
        print(f"kartahook run: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        stopper.cancel()
        await stack.stop()
        with contextlib.suppress(OSError):
            (var_dir / "run.json").unlink()
    return code


async def _start_and_demo(args: argparse.Namespace, stack: Stack, stop: asyncio.Event) -> int:
    """Start everything, show it, run the demo, then show deliveries until stopped."""
    if not await stack.start(stop):
        return 0
    state_path = stack.var_dir / "run.json"
    state_path.write_text(json.dumps(state(stack), indent=2) + "\n")
    print("ready:", flush=True)
    for line in describe(stack):
        print(line, flush=True)
    print(
        "Ctrl-C stops everything. `kartahook demo --payments N` drives more payments.", flush=True
    )

    async with httpx.AsyncClient(timeout=5.0) as http:
        watcher = ReceivedWatcher(subscriber_base_url(stack), http)
        watch = asyncio.create_task(_show_deliveries(watcher, stack.supervisor))
        try:
            if not args.no_demo:
                await _demo(args, stack, watcher)
            return await watch
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def _demo(args: argparse.Namespace, stack: Stack, shown: ReceivedWatcher) -> None:
    from kartahook.demo import run_demo
    from service.kartapay import KartaPayClient, KartaPayError

    print(
        f"demo: driving {args.payments} payments through their lifecycle, plan codes in turn…",
        flush=True,
    )
    try:
        async with KartaPayClient(stack.sandbox_url, stack.token) as client:
            result = await run_demo(
                client, subscriber_base_url(stack), args.payments, timeout_s=args.demo_timeout
            )
    except (KartaPayError, httpx.HTTPError) as exc:
        print(f"demo: failed: {exc}", flush=True)
        return
    # Let the delivery lines catch up with what the demo saw, so the summary comes after them.
    for _ in range(60):  # at most 3 s
        if shown.last_seq >= result.last_seq:
            break
        await asyncio.sleep(0.05)
    print("demo summary:", flush=True)
    for line in result.summary_lines():
        print(line, flush=True)
    print("webhooks per source (the service's /metrics):", flush=True)
    for line in await _source_lines(stack):
        print(line, flush=True)
    if result.unfinished:
        print(f"demo: {len(result.unfinished)} payments did not finish in time", flush=True)


async def _source_lines(stack: Stack) -> list[str]:
    """One line per source from ``kartahook_webhooks_total``, once the sandbox has sent all it
    had to (a provider's last webhook may trail the delivery it caused), at most ~5 s later."""
    from kartahook.demo import source_lines, webhook_counts

    async with httpx.AsyncClient(timeout=5.0) as http:
        try:
            for _ in range(50):
                listing = (await http.get(stack.sandbox_url + "/_sandbox/webhooks")).json()
                if not int(listing.get("backlog", 0)):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)  # the last answers' counts land at the end of a loop turn
            response = await http.get(stack.admin_url + "/metrics")
            response.raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            return [f"  (metrics unavailable: {type(exc).__name__})"]
    return source_lines(webhook_counts(response.text), SOURCE_NAMES)


async def _show_deliveries(watcher: ReceivedWatcher, supervisor: Supervisor) -> int:
    """Print each delivery the demo subscriber receives; return 1 when a child dies."""
    from kartahook.demo import delivery_line

    while True:
        dead = supervisor.first_exited()
        if dead is not None:
            print(
                f"kartahook run: {dead.name} exited with code {dead.exited()}; "
                f"last lines of {dead.log_path}:\n{dead.log_tail()}",
                flush=True,
            )
            return 1
        with contextlib.suppress(httpx.HTTPError):
            for entry in await watcher.new_entries():
                print(delivery_line(entry), flush=True)
        await asyncio.sleep(0.25)
