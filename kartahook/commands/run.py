"""``kartahook run``: the whole pipeline on one machine, then a few demo payments.

Starts, through the one stack builder (:mod:`kartahook.stack`), in this order and each as
``python -m kartahook.cli <command>``: an embedded Redis (when ``KARTAHOOK_REDIS_URL`` is unset),
the demo subscriber, the service, a worker and the sandbox.
It waits until each is ready, prints what listens where, drives demo payments through their
lifecycle and shows the deliveries as they arrive. Ctrl-C or SIGTERM stops everything, last
started first; so does a process that fails to start or exits (its log's last lines are shown).

The service's admin API is on, with a token generated per run (or ``KARTAHOOK_ADMIN_TOKEN``
when set); the console is at ``<admin_url>/console``. The token is written to ``run.json`` only
(mode 0600), never printed nor logged; the other commands find the admin URL, the token and the
Redis URL there (:mod:`kartahook.run_state`).

The unhappy path: ``--fail-ratio R`` makes the sandbox fail a share R of the payments;
``--failing-subscriber [R]`` adds a subscriber whose endpoint answers 500 to a share R (default
all) of its deliveries, and shortens the retry schedule (1 s, 2 s, 4 s, then a dead letter) and
the breaker's cool-down for the whole stack, so that dead letters and the circuit breaker show
up within seconds.

Everything it writes goes under ``--var-dir`` (``./var``): Redis data (and its pidfile), one log
per process, the generated sources and subscribers files, and ``run.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import httpx

from kartahook.demo import TERMINAL_STATUSES, ReceivedWatcher
from kartahook.run_state import live_run_state, run_state_path, write_run_state
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
FAILING_SUBSCRIBER_ID = "failing"
# With --failing-subscriber: retries after 1, 2 and 4 s, then a dead letter; the breaker opens
# after 5 failures in a row and half-opens after 15 s.
FAILING_SETTINGS = {
    "KARTAHOOK_DELIVERY_RETRY_SCHEDULE_S": "1,2,4",
    "KARTAHOOK_DELIVERY_RETRY_REPEAT_S": "0",
    "KARTAHOOK_DELIVERY_BREAKER_COOLDOWN_S": "15",
}
# A worker with no health-check key yet is taken as ready after this many seconds.
WORKER_SETTLE_S = 10.0
PLAN_SOURCES = {code: source for source, code in SOURCE_PLAN_CODES.items() if code}


def ratio(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


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
    parser.add_argument(
        "--fail-ratio",
        type=ratio,
        default=0.0,
        help="share of the sandbox's payments that end in `failed` (0 to 1; default 0)",
    )
    parser.add_argument(
        "--failing-subscriber",
        type=ratio,
        nargs="?",
        const=1.0,
        default=None,
        metavar="RATIO",
        help="add a subscriber that answers 500 to this share of its deliveries (default 1: "
        "all), with short retries, so dead letters and the circuit breaker show up",
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
    subscribers = [DemoSubscriber(SUBSCRIBER_ID, port=ports["subscriber"], name="demo-subscriber")]
    failing = getattr(args, "failing_subscriber", None)
    if failing is not None:
        subscribers.append(
            DemoSubscriber(FAILING_SUBSCRIBER_ID, fail_ratio=failing, name="failing-subscriber")
        )
    fail_ratio = getattr(args, "fail_ratio", 0.0)
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    return Stack(
        args.var_dir,
        host=args.host,
        ports={name: ports[name] for name in ("service", "admin", "sandbox", "redis")},
        demo_subscribers=subscribers,
        token=settings.kartapay_token.get_secret_value(),
        redis_url=settings.redis_url or "",
        worker_settle_s=WORKER_SETTLE_S,
        webhooks=getattr(args, "webhooks", "both"),
        sandbox_args=("--fail-ratio", str(fail_ratio)) if fail_ratio else (),
        settings_env=FAILING_SETTINGS if failing is not None else {},
        admin_token=admin_token or secrets.token_urlsafe(32),
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
    for extra in stack.demo_subscribers[1:]:
        what = f"answers 500 to {extra.fail_ratio:.0%} of its deliveries"
        rows.append((extra.child_name, extra.base_url(stack.client_host) + SUBSCRIBER_PATH, what))
    if "service" in pids:
        rows.append(("service", stack.service_url, "/v1/webhooks/<source>, sources below"))
        rows.append(("service (admin)", stack.admin_url, "/admin, /metrics, /console"))
    if "worker" in pids:
        rows.append(("worker", "-", f"arq worker, pid {pids['worker']}"))
    if "sandbox" in pids:
        rows.append(
            ("sandbox", stack.sandbox_url, f"KartaPay API; sends {stack.webhooks} webhooks")
        )
    lines = [f"  {name:<18} {where:<40} {what}" for name, where, what in rows]
    if "service" in pids:
        lines.append(f"  sources ({stack.var_dir / 'sources.yaml'}):")
        for source, code in SOURCE_PLAN_CODES.items():
            what = f"plan {code}" if code else "KartaPay's own webhooks"
            lines.append(f"    {source:<9} {stack.service_url}/v1/webhooks/{source:<9} {what}")
        lines += [
            f"  console: {stack.admin_url}/console  (sign in with the admin token: "
            f"`jq -r .admin_token {run_state_path(stack.var_dir)}`)",
            "  the CLI finds the admin API, its token and Redis there by itself: "
            "`kartahook subscribers list`, `kartahook dlq list`, `kartahook status`,",
            "  `kartahook listen --forward-to URL`, `kartahook trigger failed`, "
            "`kartahook logs [COMPONENT] --follow`",
        ]
    if len(stack.demo_subscribers) > 1:
        lines.append(
            "  failing subscriber: retries after 1, 2 and 4 s, then a dead letter "
            "(`kartahook dlq list`); its breaker opens after 5 failures in a row"
        )
    return lines


def state(stack: Stack) -> dict[str, Any]:
    """``run.json``: what runs where, and the admin token (the file's mode is 0600)."""
    children = stack.pids()
    return {
        "pid": os.getpid(),
        "redis_url": stack.redis_url,
        "admin_token": stack.admin_token if "service" in children else None,
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
    pid = live_run_state(var_dir).get("pid")
    return pid if isinstance(pid, int) and pid != os.getpid() else None


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
            run_state_path(var_dir).unlink()
    return code


async def _start_and_demo(args: argparse.Namespace, stack: Stack, stop: asyncio.Event) -> int:
    """Start everything, show it, run the demo, then show deliveries until stopped."""
    if not await stack.start(stop):
        return 0
    write_run_state(stack.var_dir, state(stack))
    print("ready:", flush=True)
    for line in describe(stack):
        print(line, flush=True)
    print(
        "Ctrl-C stops everything. `kartahook demo --payments N` drives more payments.", flush=True
    )

    progress = Progress()
    async with httpx.AsyncClient(timeout=5.0) as http:
        watcher = ReceivedWatcher(subscriber_base_url(stack), http)
        watch = asyncio.create_task(_show_deliveries(watcher, stack.supervisor, progress))
        try:
            if not args.no_demo:
                await _demo(args, stack, watcher, progress)
            return await watch
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


class Progress:
    """The demo's progress as it goes: each payment's plan code (its provider's source) once
    submitted, each delivery with it, and a line when a payment reaches its final status."""

    def __init__(self) -> None:
        self.plans: dict[str, str] = {}
        self.finished: dict[str, str] = {}
        self.total = 0

    def submitted(self, payment_id: str, code: str) -> None:
        self.plans[payment_id] = code
        source = PLAN_SOURCES.get(code, "?")
        print(f"  submitted  payment {payment_id}  plan {code} ({source})", flush=True)

    def lines(self, entry: dict[str, Any]) -> list[str]:
        from kartahook.demo import delivery_line

        payment_id = str(entry.get("payment_id"))
        code = self.plans.get(payment_id)
        lines = [delivery_line(entry) + (f"  [{code}]" if code else "")]
        status = entry.get("status")
        if code and status in TERMINAL_STATUSES and payment_id not in self.finished:
            self.finished[payment_id] = str(status)
            lines.append(
                f"  finished   payment {payment_id}  plan {code}: {status} "
                f"({len(self.finished)}/{self.total} payments done)"
            )
        return lines


async def _demo(
    args: argparse.Namespace, stack: Stack, shown: ReceivedWatcher, progress: Progress
) -> None:
    from kartahook.demo import run_demo
    from service.kartapay import KartaPayClient, KartaPayError

    print(
        f"demo: driving {args.payments} payments through their lifecycle, plan codes in turn…",
        flush=True,
    )
    progress.total = args.payments
    try:
        async with KartaPayClient(stack.sandbox_url, stack.token) as client:
            result = await run_demo(
                client,
                subscriber_base_url(stack),
                args.payments,
                timeout_s=args.demo_timeout,
                on_submitted=progress.submitted,
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


async def _show_deliveries(
    watcher: ReceivedWatcher, supervisor: Supervisor, progress: Progress
) -> int:
    """Print each delivery the demo subscriber receives; return 1 when a child dies."""
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
                for line in progress.lines(entry):
                    print(line, flush=True)
        await asyncio.sleep(0.25)
