"""The whole stack on one machine, started one way: by ``kartahook run``, the end-to-end
benchmark (``bench.e2e``) and the end-to-end tests (``tests/e2e``).

A :class:`Stack` starts, in this order and each as a real process (``python -m kartahook.cli
<command>``, one log per process under ``<var_dir>/log``): an embedded Redis (unless
``redis_url`` names one), any extra children (e.g. the benchmark's receiver), the demo
subscribers, the service, the worker(s) and the sandbox. It waits until each is ready and stops
them in reverse order (:class:`~kartahook.supervisor.Supervisor`), Redis last.

When the sandbox also plays the providers (``webhooks`` ``provider`` or ``both``), it starts
*before* the service, right after the demo subscribers: it generates the PayPal CA at start and
writes it to ``<var_dir>/paypal-ca.pem`` (``--paypal-ca-out``), and the service's ``paypal``
source reads that file (``cert_ca_file``) when it starts. The sandbox is ready once it listens
and the CA file is there. Nothing is lost meanwhile: the sandbox sends a webhook only when a
payment changes, and nobody drives payments before the whole stack is ready.

It writes the sources and subscribers files under ``var_dir``. The sources file names all seven
sources (``SOURCE_NAMES``), configured the way the sandbox sends each provider's webhooks. Their
secrets and credentials are ``${VAR}`` references (fresh random values per stack), the values
reach the children through their environment only: no secret is in a file or on a command line.

``async with Stack(...) as stack:`` starts and stops it; ``kartahook run`` calls
:meth:`Stack.start` and :meth:`Stack.stop` itself, to stop early on Ctrl-C.

The chaos test (tests/e2e/test_chaos.py) crashes parts on purpose: :meth:`Stack.kill` and
:meth:`Stack.restart` SIGKILL a child and start it again on the same port and arguments;
:meth:`Stack.kill_redis` and :meth:`Stack.restart_redis` do the same to the embedded Redis, which
runs with AOF and ``appendfsync always`` by default (``redis_appendfsync``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
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
WEBHOOK_MODES = ("kartapay", "provider", "both")  # the sandbox's --webhooks
# Every source of the sources file, and the plan code whose provider webhooks it receives.
SOURCE_PLAN_CODES = {
    "kartapay": None,
    "stripe": "STR",
    "paypal": "PYP",
    "mvola-mg": "MVM",
    "mvola-km": "MVK",
    "holo": "HOL",
    "huri": "HRM",
}
SOURCE_NAMES = tuple(SOURCE_PLAN_CODES)
PAYPAL_CA_FILE = "paypal-ca.pem"  # under var_dir, written by the sandbox


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
class ProviderCredentials:
    """The providers' secrets and credentials of one stack: the sandbox signs with them, the
    sources verify with them. Random per stack (never the sandbox's fixed defaults)."""

    stripe_secret: str = field(
        default_factory=lambda: "whsec_" + secrets.token_urlsafe(24), repr=False
    )
    paypal_webhook_id: str = field(default_factory=lambda: "WH-" + secrets.token_hex(8).upper())
    basic_user: str = field(default_factory=lambda: "kartahook-" + secrets.token_hex(4))
    basic_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    huri_secret: str = field(
        default_factory=lambda: "huri_" + secrets.token_urlsafe(24), repr=False
    )

    def source_env(self) -> dict[str, str]:
        """The variables the sources file's ``${…}`` name. MVola MG, MVola KM and Holo share
        the sandbox's one Basic pair."""
        basic = {}
        for prefix in ("MVOLA_MG", "MVOLA_KM", "HOLO"):
            basic[f"{prefix}_USER"] = self.basic_user
            basic[f"{prefix}_PASSWORD"] = self.basic_password
        return {
            "STRIPE_ENDPOINT_SECRET": self.stripe_secret,
            "PAYPAL_WEBHOOK_ID": self.paypal_webhook_id,
            "HURI_SECRET": self.huri_secret,
            **basic,
        }

    def sandbox_env(self) -> dict[str, str]:
        """The same values as the sandbox reads them (``KARTAHOOK_SANDBOX_<FLAG>``)."""
        return {
            "KARTAHOOK_SANDBOX_STRIPE_SECRET": self.stripe_secret,
            "KARTAHOOK_SANDBOX_PAYPAL_WEBHOOK_ID": self.paypal_webhook_id,
            "KARTAHOOK_SANDBOX_BASIC_USER": self.basic_user,
            "KARTAHOOK_SANDBOX_BASIC_PASSWORD": self.basic_password,
            "KARTAHOOK_SANDBOX_HURI_SECRET": self.huri_secret,
        }


def sources_yaml(paypal_ca_file: Path | None) -> str:
    """The sources file of a stack: all seven sources, secrets as ``${VAR}`` references, each
    configured as the sandbox sends that provider's webhooks (docs/sandbox.md)."""
    # JSON's double-quoted string is a YAML one too: any path stays one scalar.
    ca = f"    cert_ca_file: {json.dumps(str(paypal_ca_file))}\n" if paypal_ca_file else ""

    def basic(prefix: str) -> str:
        return f'[{{username: "${{{prefix}_USER}}", password: "${{{prefix}_PASSWORD}}"}}]'

    return (
        "# Written by kartahook's stack builder; secrets and credentials come from the\n"
        "# environment. Each source is configured as the sandbox sends its webhooks.\n"
        "sources:\n"
        f'  kartapay: {{secrets: ["${{{SOURCE_SECRET_ENV}}}"]}}\n'
        '  stripe: {secrets: ["${STRIPE_ENDPOINT_SECRET}"]}\n'
        "  paypal:\n"
        '    webhook_id: "${PAYPAL_WEBHOOK_ID}"\n'
        '    cert_hosts: ["127.0.0.1", "localhost"]   # the sandbox serves the certificate\n'
        f"{ca}"
        f"  mvola-mg: {{credentials: {basic('MVOLA_MG')}}}\n"
        f"  mvola-km: {{credentials: {basic('MVOLA_KM')}}}\n"
        "  holo:\n"
        f"    credentials: {basic('HOLO')}\n"
        '    event_id: "query:transactionId"\n'
        '    payment_id: "query:reference"\n'
        "  huri:\n"
        '    secrets: ["${HURI_SECRET}"]\n'
        '    signature_header: "X-Huri-Signature"\n'
        "    algorithm: sha256\n"
        "    encoding: hex\n"
        '    event_id: "id"\n'
        '    payment_id: "data.paymentId"\n'
    )


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
    fail_ratio: float = 0.0  # share of deliveries it answers 500 (its --fail-ratio)
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
    # ``KARTAHOOK_*`` settings given to every child on top of ``base_env`` (e.g. a short retry
    # schedule, so that dead letters show up in a demo).
    settings_env: Mapping[str, str] = field(default_factory=dict)
    # The admin API's token, given to the service only (KARTAHOOK_ADMIN_TOKEN); None: the
    # service's environment decides (off unless set there).
    admin_token: str | None = field(default=None, repr=False)
    sandbox_args: Sequence[str] = ()
    sandbox_webhooks: bool = True  # False: the sandbox sends none
    # Which webhooks the sandbox sends (its --webhooks): KartaPay's own, the plan's provider's,
    # or both. ``provider``/``both`` start the sandbox before the service (the PayPal CA).
    webhooks: str = "kartapay"
    providers: ProviderCredentials = field(default_factory=ProviderCredentials, repr=False)
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
        if self.webhooks not in WEBHOOK_MODES:
            raise ValueError(f"webhooks must be one of {', '.join(WEBHOOK_MODES)}")
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
    def provider_webhooks(self) -> bool:
        """Whether the sandbox sends the providers' webhooks (and makes the PayPal CA)."""
        return self.sandbox_webhooks and self.webhooks != "kartapay"

    @property
    def paypal_ca_file(self) -> Path:
        """Where the sandbox writes the PayPal CA the ``paypal`` source trusts."""
        return (self.var_dir / PAYPAL_CA_FILE).resolve()

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
        sources.write_text(sources_yaml(self.paypal_ca_file if self.provider_webhooks else None))
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
                **self.providers.source_env(),
                **self.settings_env,
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
            if demo.fail_ratio:
                argv += ["--fail-ratio", str(demo.fail_ratio)]
            # The secret reaches it through the environment, not the command line.
            demo_env = {**env, "KARTAHOOK_DEMO_SUBSCRIBER_SECRET": demo.secret}
            ready = http_ok(demo.base_url(self.client_host) + "/healthz")
            specs.append(("demo-subscriber", ChildSpec(demo.child_name, argv, demo_env, ready)))
        serve = [*CLI, "serve", "--host", self.host, "--port", str(self.ports["service"])]
        serve += ["--admin-host", self.host, "--admin-port", str(self.ports["admin"])]
        sandbox = ("sandbox", ChildSpec("sandbox", [], dict(env), None))
        if self.provider_webhooks:  # it writes the PayPal CA the service reads at start
            specs.append(sandbox)
        serve_env = dict(env)
        if self.admin_token:  # through the environment: never on a command line
            serve_env["KARTAHOOK_ADMIN_TOKEN"] = self.admin_token
        specs.append(("serve", ChildSpec("service", self._argv("service", serve), serve_env, None)))
        for n in range(1, self.workers + 1):
            name = "worker" if n == 1 else f"worker-{n}"
            argv = self._argv("worker", [*CLI, "worker"])
            specs.append(("worker", ChildSpec(name, argv, dict(env), None)))
        if not self.provider_webhooks:
            specs.append(sandbox)
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
            ready = tcp_open(self.client_host, self.ports["sandbox"])
            if self.provider_webhooks:
                argv += ["--webhooks", self.webhooks, "--kartahook-url", self.service_url]
                argv += ["--paypal-ca-out", str(self.paypal_ca_file)]
                # Its provider secrets and credentials, too, come through the environment.
                env.update(self.providers.sandbox_env())
                self.paypal_ca_file.unlink(missing_ok=True)  # a previous run's
                ready = self._sandbox_ready(ready)
            if self.sandbox_webhooks:
                argv += ["--webhook-url", self.webhook_url]
                # The secret goes through the environment (the sandbox's default for
                # --webhook-secret), so it does not show in the process list.
                env["KARTAHOOK_SANDBOX_WEBHOOK_SECRET"] = self.source_secret
            spec.argv = [*argv, *self.sandbox_args]
            spec.env = env
            spec.ready = ready
        return spec

    def _sandbox_ready(self, listening: ReadyCheck) -> ReadyCheck:
        """Ready once it listens and has written the PayPal CA (uvicorn binds its socket only
        after the lifespan, which writes the CA, has started)."""

        async def check() -> bool:
            return self.paypal_ca_file.exists() and await listening()

        return check

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
            if self.redis.replaced:
                self.report(
                    f"  stopped the redis-server (pid {self.redis.replaced}) an earlier run "
                    f"left on {self.redis.data_dir}"
                )
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
    "SOURCE_NAMES",
    "SOURCE_PLAN_CODES",
    "SOURCE_SECRET_ENV",
    "DemoSubscriber",
    "ProviderCredentials",
    "Stack",
    "Subscriber",
    "isolated_env",
]
