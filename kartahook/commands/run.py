"""``kartahook run``: the whole pipeline on one machine, then a few demo payments.

Starts, in this order and each as ``python -m kartahook.cli <command>``: an embedded Redis (when
``KARTAHOOK_REDIS_URL`` is unset), the demo subscriber, the service, a worker and the sandbox.
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from kartahook.demo import ReceivedWatcher
from kartahook.supervisor import (
    ChildFailed,
    ChildSpec,
    ReadyCheck,
    Supervisor,
    http_ok,
    port_is_free,
    tcp_open,
)
from service.domain.signing import generate_secret
from service.settings import Settings
from service.store.server import RedisServer, free_port

DEFAULT_BASE_PORT = 8700
# Port of each component: the base port plus this offset.
PORT_OFFSETS = {"service": 0, "sandbox": 1, "subscriber": 2, "redis": 3}
SOURCE_SECRET_ENV = "KARTAPAY_WEBHOOK_SECRET"  # noqa: S105 (variable names, not secrets)
SUBSCRIBER_SECRET_ENV = "DEMO_SUBSCRIBER_WEBHOOK_SECRET"  # noqa: S105
SUBSCRIBER_ID = "demo"
SUBSCRIBER_PATH = "/hooks/payments"
# A worker with no health-check key yet is taken as ready after this many seconds.
WORKER_SETTLE_S = 10.0
# Components in start order (stopped in reverse).
START_ORDER = ("demo-subscriber", "service", "worker", "sandbox")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="base port: service +0, sandbox +1, demo subscriber +2, Redis +3; "
        "0 picks free ports (default %(default)s)",
    )
    for name in PORT_OFFSETS:
        parser.add_argument(f"--{name}-port", type=int, help=f"port of the {name}")
    parser.add_argument("--payments", type=int, default=3, help="demo payments to drive")
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


@dataclass
class Stack:
    """What ``kartahook run`` decided and started."""

    host: str
    ports: dict[str, int]
    var_dir: Path
    settings: Settings
    redis: RedisServer | None = None
    redis_url: str = ""
    source_secret: str = field(default_factory=generate_secret, repr=False)
    subscriber_secret: str = field(default_factory=generate_secret, repr=False)

    def url(self, component: str) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.ports[component]}"

    @property
    def subscriber_url(self) -> str:
        return self.url("subscriber") + SUBSCRIBER_PATH

    @property
    def webhook_url(self) -> str:
        return self.url("service") + "/v1/webhooks/kartapay"

    def write_config_files(self) -> tuple[Path, Path]:
        """The sources and subscribers files; their secrets are ``${VAR}``s from the env."""
        sources = self.var_dir / "sources.yaml"
        sources.write_text(
            "# Written by kartahook run; the secret comes from the environment.\n"
            f'sources:\n  kartapay: {{secrets: ["${{{SOURCE_SECRET_ENV}}}"]}}\n'
        )
        subscribers = self.var_dir / "subscribers.yaml"
        subscribers.write_text(
            "# Written by kartahook run; the secret comes from the environment.\n"
            "subscribers:\n"
            f"  - id: {SUBSCRIBER_ID}\n"
            f"    url: {self.subscriber_url}\n"
            f'    secret: "${{{SUBSCRIBER_SECRET_ENV}}}"\n'
            '    events: ["payment.*"]\n'
        )
        return sources, subscribers

    def child_env(self, sources: Path, subscribers: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "KARTAHOOK_REDIS_URL": self.redis_url,
                "KARTAHOOK_KARTAPAY_URL": self.url("sandbox"),
                "KARTAHOOK_KARTAPAY_TOKEN": self.settings.kartapay_token.get_secret_value(),
                "KARTAHOOK_SOURCES_FILE": str(sources.resolve()),
                "KARTAHOOK_SUBSCRIBERS_FILE": str(subscribers.resolve()),
                SOURCE_SECRET_ENV: self.source_secret,
                SUBSCRIBER_SECRET_ENV: self.subscriber_secret,
            }
        )
        return env

    def spec_for(self, name: str, env: dict[str, str]) -> ChildSpec:
        """How to start the component ``name`` (one of ``START_ORDER``)."""
        cli = [sys.executable, "-m", "kartahook.cli"]
        host = self.host
        if name == "demo-subscriber":
            return ChildSpec(
                name,
                [*cli, "demo-subscriber", "--host", host, "--port", str(self.ports["subscriber"])],
                # The secret reaches it through the environment, not the command line.
                {**env, "KARTAHOOK_DEMO_SUBSCRIBER_SECRET": self.subscriber_secret},
                http_ok(self.url("subscriber") + "/healthz"),
            )
        if name == "service":
            return ChildSpec(
                name,
                [*cli, "serve", "--host", host, "--port", str(self.ports["service"])],
                env,
                http_ok(self.url("service") + "/healthz"),
            )
        if name == "worker":
            return ChildSpec(name, [*cli, "worker"], env, self._worker_ready())
        secret = self.source_secret
        argv = [*cli, "sandbox", "--host", host, "--port", str(self.ports["sandbox"])]
        argv += ["--webhook-url", self.webhook_url]
        ready = tcp_open("127.0.0.1" if host == "0.0.0.0" else host, self.ports["sandbox"])
        # The secret goes through the environment (the sandbox's default for --webhook-secret),
        # so it does not show in the process list.
        return ChildSpec(name, argv, {**env, "KARTAHOOK_SANDBOX_WEBHOOK_SECRET": secret}, ready)

    def _worker_ready(self) -> ReadyCheck:
        """Ready once arq has written its health-check key (or has run for a while)."""
        key = self.settings.queue_name + ":health-check"
        started = time.monotonic()

        async def check() -> bool:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                if await client.exists(key):
                    return True
            except aioredis.RedisError:
                pass
            finally:
                await client.aclose()
            return time.monotonic() - started > WORKER_SETTLE_S

        return check

    def describe(self, supervisor: Supervisor) -> list[str]:
        pids = {child.name: child.pid for child in supervisor.children}
        redis_note = "embedded, AOF on, data in var/redis" if self.redis else "KARTAHOOK_REDIS_URL"
        rows = [("redis", self.redis_url, redis_note)]
        rows.append(("demo-subscriber", self.subscriber_url, "GET /received lists deliveries"))
        rows.append(("service", self.url("service"), "POST /v1/webhooks/kartapay, /metrics"))
        rows.append(("worker", "-", f"arq worker, pid {pids.get('worker')}"))
        rows.append(
            ("sandbox", self.url("sandbox"), f"KartaPay API; webhooks to {self.webhook_url}")
        )
        return [f"  {name:<16} {where:<40} {what}" for name, where, what in rows]

    def state(self, supervisor: Supervisor) -> dict[str, Any]:
        """``run.json``: what runs where. No secrets."""
        children = {child.name: child.pid for child in supervisor.children}
        if self.redis and self.redis.process:
            children["redis"] = self.redis.process.pid
        return {
            "pid": os.getpid(),
            "redis_url": self.redis_url,
            "service_url": self.url("service"),
            "sandbox_url": self.url("sandbox"),
            "subscriber_url": self.url("subscriber"),
            "webhook_url": self.webhook_url,
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
    stack = Stack(args.host, choose_ports(args), var_dir, settings)

    supervisor = Supervisor(var_dir / "log", grace_s=args.grace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            supervisor.force = True
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    work = asyncio.create_task(_start_and_demo(args, stack, supervisor, stop))
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
        await supervisor.stop_all(lambda line: print(line, flush=True))
        if stack.redis is not None:
            await asyncio.to_thread(stack.redis.stop)
            print("  stopped redis", flush=True)
        with contextlib.suppress(OSError):
            (var_dir / "run.json").unlink()
    return code


async def _start_and_demo(
    args: argparse.Namespace, stack: Stack, supervisor: Supervisor, stop: asyncio.Event
) -> int:
    """Start everything, show it, run the demo, then show deliveries until stopped."""
    if stack.settings.redis_url:
        stack.redis_url = stack.settings.redis_url
    else:
        server = RedisServer(stack.var_dir / "redis", port=stack.ports["redis"])
        stack.redis = server
        await asyncio.to_thread(server.start, 30.0)
        stack.redis_url = server.url
    sources, subscribers = stack.write_config_files()
    env = stack.child_env(sources, subscribers)
    for name in START_ORDER:
        child = supervisor.start(stack.spec_for(name, env))
        if not await supervisor.wait_ready(child, stop):  # ChildFailed when it cannot start
            return 0
    state_path = stack.var_dir / "run.json"
    state_path.write_text(json.dumps(stack.state(supervisor), indent=2) + "\n")
    print("ready:", flush=True)
    for line in stack.describe(supervisor):
        print(line, flush=True)
    print(
        "Ctrl-C stops everything. `kartahook demo --payments N` drives more payments.", flush=True
    )

    async with httpx.AsyncClient(timeout=5.0) as http:
        watcher = ReceivedWatcher(stack.url("subscriber"), http)
        watch = asyncio.create_task(_show_deliveries(watcher, supervisor))
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

    print(f"demo: driving {args.payments} payments through their lifecycle…", flush=True)
    try:
        async with KartaPayClient(stack.url("sandbox"), stack.settings.kartapay_token) as client:
            result = await run_demo(
                client, stack.url("subscriber"), args.payments, timeout_s=args.demo_timeout
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
    if result.unfinished:
        print(f"demo: {len(result.unfinished)} payments did not finish in time", flush=True)


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
