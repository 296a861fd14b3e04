"""The whole stack on one machine, started one way: by ``kartahook run``, the end-to-end
benchmark (``bench.e2e``) and the end-to-end tests (``tests/e2e``).

A :class:`Stack` starts, in this order and each as a real process (``python -m kartahook.cli
<command>``, one log per process under ``<var_dir>/log``): an embedded Redis (unless
``redis_url`` names one), any extra children (e.g. the benchmark's receiver), the demo
subscribers, the service, the worker(s) and the sandbox. It waits until each is ready and stops
them in reverse order (:class:`~kartahook.supervisor.Supervisor`), Redis last.

It writes the sources and subscribers files under ``var_dir``. Their secrets are ``${VAR}``
references, the values reach the children through their environment only: no secret is in a
file or on a command line.

``async with Stack(...) as stack:`` starts and stops it; ``kartahook run`` calls
:meth:`Stack.start` and :meth:`Stack.stop` itself, to stop early on Ctrl-C.

The chaos test (tests/e2e/test_chaos.py) crashes parts on purpose: :meth:`Stack.kill` and
:meth:`Stack.restart` SIGKILL a child and start it again on the same port and arguments;
:meth:`Stack.kill_redis` and :meth:`Stack.restart_redis` do the same to the embedded Redis, which
runs with AOF and ``appendfsync always`` by default (``redis_appendfsync``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from redis.exceptions import RedisError

from kartahook.supervisor import ChildSpec, ReadyCheck, Supervisor, http_ok, tcp_open
from service.domain.signing import generate_secret
from service.settings import Settings
from service.store.client import redis_client
from service.store.layout import health_check_key
from service.store.server import RedisServer, free_port

CLI = (sys.executable, "-m", "kartahook.cli")
SOURCE_SECRET_ENV = "KARTAPAY_WEBHOOK_SECRET"  # noqa: S105 (a variable name, not a secret)
SUBSCRIBER_PATH = "/hooks/payments"
WEBHOOK_PATH = "/v1/webhooks/kartapay"


def isolated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``KARTAHOOK_*`` setting (so a developer's own
    settings do not leak into a test or benchmark stack), JSON logs, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")}
    env["KARTAHOOK_LOG_FORMAT"] = "json"
    env.update(extra or {})
    return env


def _default_token() -> str:
    return Settings().kartapay_token.get_secret_value()


@dataclass(frozen=True)
class Subscriber:
    """One entry of the subscribers file; its secret reaches the children as ``secret_env``."""

    id: str
    url: str
    secret: str = field(default_factory=generate_secret, repr=False)
    events: tuple[str, ...] = ("payment.*",)
    channels: tuple[str, ...] | None = None
    concurrency: int | None = None

    @property
    def secret_env(self) -> str:
        """The environment variable the file's ``${…}`` names (``demo`` ->
        ``DEMO_SUBSCRIBER_WEBHOOK_SECRET``)."""
        return re.sub(r"[^A-Z0-9]", "_", self.id.upper()) + "_SUBSCRIBER_WEBHOOK_SECRET"

    def yaml(self) -> str:
        lines = [
            f"  - id: {self.id}",
            f"    url: {self.url}",
            f'    secret: "${{{self.secret_env}}}"',
            f"    events: [{', '.join(repr(e) for e in self.events)}]",
        ]
        if self.channels is not None:
            lines.append(f"    channels: [{', '.join(repr(c) for c in self.channels)}]")
        if self.concurrency:
            lines.append(f"    concurrency: {self.concurrency}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DemoSubscriber:
    """A ``kartahook demo-subscriber`` process, registered in the subscribers file."""

    id: str
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=generate_secret, repr=False)
    events: tuple[str, ...] = ("payment.*",)
    channels: tuple[str, ...] | None = None
    keep: int | None = None
    keep_raw: bool = False  # list each delivery's body and signature headers too
    name: str = ""  # the process's name (log file, messages); default ``subscriber-<id>``

    @property
    def child_name(self) -> str:
        return self.name or f"subscriber-{self.id}"

    def base_url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def entry(self, host: str = "127.0.0.1") -> Subscriber:
        return Subscriber(
            self.id, self.base_url(host) + SUBSCRIBER_PATH, self.secret, self.events, self.channels
        )


@dataclass
class Stack:
    """The configuration of one whole stack and, once started, its running parts."""

    var_dir: Path
    host: str = "127.0.0.1"
    # ``service``, ``admin`` (its admin listener), ``sandbox``, ``redis``; a missing one gets a
    # free port.
    ports: dict[str, int] = field(default_factory=dict)
    demo_subscribers: Sequence[DemoSubscriber] = ()
    # More subscribers-file entries (e.g. the benchmark's receiver paths).
    subscribers: Sequence[Subscriber] = ()
    # Started before everything else but Redis (e.g. the benchmark's receiver).
    extra_children: Sequence[ChildSpec] = ()
    token: str = field(default_factory=_default_token, repr=False)
    redis_url: str = ""  # an existing Redis; empty: an embedded one under ``var_dir/redis``
    redis_appendonly: bool = True
    # ``always``: Redis fsyncs each write before answering it, so a webhook answered 2xx
    # survives a crash of Redis or of the machine (guarantee 1; docs/operations.md).
    redis_appendfsync: str = "always"
    base_env: Mapping[str, str] | None = None  # the children's environment; default os.environ
    sandbox_args: Sequence[str] = ()
    sandbox_webhooks: bool = True  # False: the sandbox sends none
    workers: int = 1
    # A worker without arq's health-check key is taken as ready after this long (None: never).
    worker_settle_s: float | None = None
    # (role, argv) -> argv: e.g. the benchmark runs service and worker under py-spy.
    wrap_argv: Callable[[str, list[str]], list[str]] | None = None
    grace_s: float = 10.0
    ready_timeout_s: float = 60.0
    report: Callable[[str], None] = field(default=lambda _: None, repr=False)
    source_secret: str = field(default_factory=generate_secret, repr=False)
    redis: RedisServer | None = field(default=None, init=False)
    supervisor: Supervisor = field(init=False)
    _stopped: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.var_dir / "log", grace_s=self.grace_s)
        for name in ("service", "admin", "sandbox", "redis"):
            if not self.ports.get(name):
                port = free_port()
                while port in self.ports.values():
                    port = free_port()
                self.ports[name] = port

    # --- where things are -------------------------------------------------------------------

    def url(self, component: str) -> str:
        """``http://host:port`` of ``service`` or ``sandbox``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.ports[component]}"

    @property
    def service_url(self) -> str:
        return self.url("service")

    @property
    def admin_url(self) -> str:
        """The service's admin listener: ``/admin``, ``/metrics``."""
        return self.url("admin")

    @property
    def sandbox_url(self) -> str:
        return self.url("sandbox")

    @property
    def webhook_url(self) -> str:
        """Where the sandbox sends KartaPay's webhooks: the service."""
        return self.service_url + WEBHOOK_PATH

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def entries(self) -> list[Subscriber]:
        """Every subscriber of the subscribers file."""
        demo = [d.entry(self.client_host) for d in self.demo_subscribers]
        return [*demo, *self.subscribers]

    def pids(self) -> dict[str, int]:
        """Process id of each running part, Redis included when embedded."""
        pids = {child.name: child.pid for child in self.supervisor.children}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        return pids

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every child's log, for a failure message."""
        return "\n".join(
            f"--- {child.name} ({'running' if child.exited() is None else child.exited()}) ---\n"
            f"{child.log_tail(lines)}"
            for child in self.supervisor.children
        )

    # --- files, environment, commands ---------------------------------------------------------

    def write_config_files(self) -> tuple[Path, Path]:
        """The sources and subscribers files; their secrets are ``${VAR}``s from the env."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        sources = self.var_dir / "sources.yaml"
        sources.write_text(
            "# Written by kartahook's stack builder; the secret comes from the environment.\n"
            f'sources:\n  kartapay: {{secrets: ["${{{SOURCE_SECRET_ENV}}}"]}}\n'
        )
        subscribers = self.var_dir / "subscribers.yaml"
        subscribers.write_text(
            "# Written by kartahook's stack builder; the secrets come from the environment.\n"
            "subscribers:\n" + "".join(entry.yaml() for entry in self.entries())
        )
        return sources.resolve(), subscribers.resolve()

    def child_env(self, sources: Path, subscribers: Path) -> dict[str, str]:
        """The environment every child gets: settings, file paths and the secrets they name."""
        env = dict(os.environ if self.base_env is None else self.base_env)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "KARTAHOOK_REDIS_URL": self.redis_url,
                "KARTAHOOK_KARTAPAY_URL": self.sandbox_url,
                "KARTAHOOK_KARTAPAY_TOKEN": self.token,
                "KARTAHOOK_SOURCES_FILE": str(sources),
                "KARTAHOOK_SUBSCRIBERS_FILE": str(subscribers),
                SOURCE_SECRET_ENV: self.source_secret,
            }
        )
        env.update({entry.secret_env: entry.secret for entry in self.entries()})
        return env

    def _argv(self, role: str, argv: list[str]) -> list[str]:
        return self.wrap_argv(role, argv) if self.wrap_argv else argv

    def specs(self, env: Mapping[str, str]) -> list[tuple[str, ChildSpec]]:
        """(command, how to start it) of every child, in start order.

        Readiness checks and the sandbox's command line are filled in by :meth:`prepare` just
        before each child starts: the sandbox's webhook target depends on whether the service
        and the worker did start.
        """
        specs: list[tuple[str, ChildSpec]] = [("extra", spec) for spec in self.extra_children]
        for demo in self.demo_subscribers:
            argv = [*CLI, "demo-subscriber", "--host", self.host, "--port", str(demo.port)]
            if demo.keep is not None:
                argv += ["--keep", str(demo.keep)]
            if demo.keep_raw:
                argv.append("--keep-raw")
            # The secret reaches it through the environment, not the command line.
            demo_env = {**env, "KARTAHOOK_DEMO_SUBSCRIBER_SECRET": demo.secret}
            ready = http_ok(demo.base_url(self.client_host) + "/healthz")
            specs.append(("demo-subscriber", ChildSpec(demo.child_name, argv, demo_env, ready)))
        serve = [*CLI, "serve", "--host", self.host, "--port", str(self.ports["service"])]
        serve += ["--admin-host", self.host, "--admin-port", str(self.ports["admin"])]
        specs.append(("serve", ChildSpec("service", self._argv("service", serve), dict(env), None)))
        for n in range(1, self.workers + 1):
            name = "worker" if n == 1 else f"worker-{n}"
            argv = self._argv("worker", [*CLI, "worker"])
            specs.append(("worker", ChildSpec(name, argv, dict(env), None)))
        specs.append(("sandbox", ChildSpec("sandbox", [], dict(env), None)))
        return specs

    def prepare(self, command: str, spec: ChildSpec) -> ChildSpec:
        """``spec`` with its readiness check, and the sandbox's argv (known only now)."""
        spec.ready_timeout_s = self.ready_timeout_s
        if command == "serve":
            spec.ready = http_ok(self.service_url + "/healthz")
        elif command == "worker":
            spec.ready = self._worker_ready()
        elif command == "sandbox":
            argv = [*CLI, "sandbox", "--host", self.host, "--port", str(self.ports["sandbox"])]
            env = dict(spec.env)
            if self.sandbox_webhooks:
                argv += ["--webhook-url", self.webhook_url]
                # The secret goes through the environment (the sandbox's default for
                # --webhook-secret), so it does not show in the process list.
                env["KARTAHOOK_SANDBOX_WEBHOOK_SECRET"] = self.source_secret
            spec.argv = [*argv, *self.sandbox_args]
            spec.env = env
            spec.ready = tcp_open(self.client_host, self.ports["sandbox"])
        return spec

    def _worker_ready(self) -> ReadyCheck:
        """Ready once arq has written its health-check key (or after ``worker_settle_s``)."""
        key = health_check_key(Settings().queue_name)
        started = time.monotonic()

        async def check() -> bool:
            client = redis_client(self.redis_url)
            try:
                if await client.exists(key):
                    return True
            except RedisError:
                pass
            finally:
                await client.aclose()
            settle = self.worker_settle_s
            return settle is not None and time.monotonic() - started > settle

        return check

    # --- start and stop -----------------------------------------------------------------------

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Start everything in order, each once ready; False when ``stop`` was set meanwhile.

        Raises :class:`ChildFailed` for a child that exits or is not ready in time, ``OSError`` or
        ``RuntimeError`` when Redis cannot start. What did start stays running: call
        :meth:`stop` in any case.
        """
        stop = stop or asyncio.Event()
        if not self.redis_url:
            self.redis = RedisServer(
                self.var_dir / "redis",
                port=self.ports["redis"],
                appendonly=self.redis_appendonly,
                appendfsync=self.redis_appendfsync,
            )
            await asyncio.to_thread(self.redis.start, 30.0)
            self.redis_url = self.redis.url
        env = self.child_env(*self.write_config_files())
        for command, spec in self.specs(env):
            child = self.supervisor.start(self.prepare(command, spec))
            if not await self.supervisor.wait_ready(child, stop):
                return False
        return True

    # --- crash and restart (the chaos test) -----------------------------------------------------

    async def kill(self, name: str) -> None:
        """SIGKILL the child ``name`` (``service``, ``worker``, ``worker-2``, …) and wait for it."""
        await self.supervisor.kill(name)

    async def restart(self, name: str, stop: asyncio.Event | None = None) -> bool:
        """Start the exited child ``name`` again on the same port, args and environment, and
        wait until it is ready (False when ``stop`` was set meanwhile; :class:`ChildFailed`)."""
        child = self.supervisor.restart(name)
        return await self.supervisor.wait_ready(child, stop or asyncio.Event())

    async def kill_redis(self) -> None:
        """SIGKILL the embedded Redis: no shutdown, only what its AOF holds survives."""
        if self.redis is None:
            raise RuntimeError("no embedded Redis to kill")
        await asyncio.to_thread(self.redis.stop, True)

    async def restart_redis(self, timeout_s: float = 30.0) -> None:
        """Start the embedded Redis again, same port and data directory (it replays its AOF)."""
        if self.redis is None:
            raise RuntimeError("no embedded Redis to restart")
        await asyncio.to_thread(self.redis.start, timeout_s)

    async def add_worker(self) -> None:
        """Start one more ``kartahook worker`` once the stack runs (e.g. after webhooks were
        queued by a stack started with ``workers=0``), and wait until it is ready.

        Raises :class:`ChildFailed` as :meth:`start` does.
        """
        running = [c for c in self.supervisor.children if c.name.split("-")[0] == "worker"]
        name = "worker" if not running else f"worker-{len(running) + 1}"
        env = self.child_env(*self.write_config_files())
        spec = ChildSpec(name, self._argv("worker", [*CLI, "worker"]), env, None)
        child = self.supervisor.start(self.prepare("worker", spec))
        await self.supervisor.wait_ready(child, asyncio.Event())

    async def stop(self) -> None:
        """Stop every child, last started first, then the embedded Redis. Once is enough:
        a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        await self.supervisor.stop_all(self.report)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
            self.report("  stopped redis")

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = [
    "CLI",
    "SOURCE_SECRET_ENV",
    "DemoSubscriber",
    "Stack",
    "Subscriber",
    "isolated_env",
]
