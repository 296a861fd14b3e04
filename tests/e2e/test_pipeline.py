"""The whole pipeline through real processes: Redis, sandbox, ``kartahook serve``,
``kartahook worker`` and two demo subscribers with different filters.

The sandbox sends every webhook twice and shuffles them (``--duplicates --out-of-order``); each
subscriber must still get every transition it asked for exactly once by ``webhook-id``, in
lifecycle order per payment, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from kartahook.demo import demo_claim
from kartahook.supervisor import ChildFailed, ChildSpec, Supervisor, http_ok, tcp_open
from service.domain.signing import generate_secret
from service.kartapay import GATEWAY_CODES, KartaPayClient
from service.settings import Settings
from service.store.server import RedisServer, free_port

PAYMENTS = 200
TOKEN = "e2e-sandbox-token"
LIFECYCLE = ("submitted", "approved", "captured", "completed")  # what a payment emits
DELIVERY_TIMEOUT_S = 150.0
CLI = [sys.executable, "-m", "kartahook.cli"]


@dataclass(frozen=True)
class SubscriberCase:
    """One demo subscriber and the filter it is registered with."""

    id: str
    events: tuple[str, ...]
    channels: tuple[str, ...] | None
    port: int
    secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expected(self, channels: dict[str, str]) -> dict[str, list[str]]:
        """Per payment, the statuses this subscriber must receive, in lifecycle order."""
        wanted = [s for s in LIFECYCLE if self._event_wanted(f"payment.{s}")]
        return {
            pid: list(wanted)
            for pid, channel in channels.items()
            if self.channels is None or channel in self.channels
        }

    def _event_wanted(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)

    def yaml(self) -> str:
        lines = [
            f"  - id: {self.id}",
            f"    url: {self.url}/hooks/payments",
            f'    secret: "{self.secret}"',
            f"    events: [{', '.join(repr(e) for e in self.events)}]",
        ]
        if self.channels is not None:
            lines.append(f"    channels: [{', '.join(repr(c) for c in self.channels)}]")
        return "\n".join(lines) + "\n"


@dataclass
class Pipeline:
    sandbox_url: str
    redis_url: str
    subscribers: list[SubscriberCase]
    supervisor: Supervisor


def log_tails(supervisor: Supervisor) -> str:
    return "\n".join(
        f"--- {child.name} ({'running' if child.exited() is None else child.exited()}) ---\n"
        f"{child.log_tail(30)}"
        for child in supervisor.children
    )


@contextlib.asynccontextmanager
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    """Everything started as real processes; all of it stopped again on the way out."""
    redis_server = RedisServer(tmp_path / "redis", appendonly=False).start()
    supervisor = Supervisor(tmp_path / "log", grace_s=15.0)
    try:
        source_secret = generate_secret()
        subscribers = [
            SubscriberCase("all-events", ("payment.*",), None, free_port(), generate_secret()),
            SubscriberCase(
                "web-settlements",
                ("payment.captured", "payment.completed"),
                ("web",),
                free_port(),
                generate_secret(),
            ),
        ]
        service_port, sandbox_port = free_port(), free_port()
        sources = tmp_path / "sources.yaml"
        sources.write_text(f'sources:\n  kartapay: {{secrets: ["{source_secret}"]}}\n')
        subscribers_file = tmp_path / "subscribers.yaml"
        subscribers_file.write_text("subscribers:\n" + "".join(s.yaml() for s in subscribers))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "KARTAHOOK_REDIS_URL": redis_server.url,
                "KARTAHOOK_KARTAPAY_URL": f"http://127.0.0.1:{sandbox_port}",
                "KARTAHOOK_KARTAPAY_TOKEN": TOKEN,
                "KARTAHOOK_SOURCES_FILE": str(sources),
                "KARTAHOOK_SUBSCRIBERS_FILE": str(subscribers_file),
                "KARTAHOOK_LOG_FORMAT": "json",
            }
        )
        specs = [
            ChildSpec(
                f"subscriber-{s.id}",
                [
                    *CLI,
                    "demo-subscriber",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(s.port),
                    "--keep",
                    "10000",
                ],
                {**env, "KARTAHOOK_DEMO_SUBSCRIBER_SECRET": s.secret},
                http_ok(s.url + "/healthz"),
            )
            for s in subscribers
        ]
        service_url = f"http://127.0.0.1:{service_port}"
        specs.append(
            ChildSpec(
                "service",
                [
                    *CLI,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(service_port),
                    "--admin-port",
                    str(free_port()),
                ],
                env,
                http_ok(service_url + "/healthz"),
            )
        )
        specs.append(
            ChildSpec(
                "worker",
                [*CLI, "worker"],
                env,
                worker_ready(redis_server.url, Settings().queue_name),
            )
        )
        specs.append(
            ChildSpec(
                "sandbox",
                [
                    *CLI,
                    "sandbox",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(sandbox_port),
                    "--webhook-url",
                    service_url + "/v1/webhooks/kartapay",
                    "--step-delay",
                    "0.1",
                    "--duplicates",
                    "--out-of-order",
                    "--seed",
                    "6",
                ],
                {**env, "KARTAHOOK_SANDBOX_WEBHOOK_SECRET": source_secret},
                tcp_open("127.0.0.1", sandbox_port),
            )
        )
        never = asyncio.Event()
        for spec in specs:
            child = supervisor.start(spec)
            try:
                await supervisor.wait_ready(child, never)
            except ChildFailed as exc:
                raise AssertionError(f"{exc}\n{log_tails(supervisor)}") from None
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        yield Pipeline(sandbox_url, redis_server.url, subscribers, supervisor)
    finally:
        await supervisor.stop_all(lambda _: None)
        redis_server.stop()


def worker_ready(redis_url: str, queue_name: str) -> Any:
    """Ready once arq has written its health-check key: the worker polls the queue."""

    async def check() -> bool:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return bool(await client.exists(queue_name + ":health-check"))
        except aioredis.RedisError:
            return False
        finally:
            await client.aclose()

    return check


async def create_payments(sandbox_url: str, count: int) -> dict[str, str]:
    """Create and submit ``count`` payments, half on channel ``web``; payment id -> channel."""
    limit = asyncio.Semaphore(16)
    async with KartaPayClient(sandbox_url, TOKEN, timeout=30.0) as kartapay:

        async def one(n: int) -> tuple[str, str]:
            channel = "web" if n % 2 else "pos"
            claim = demo_claim(n)
            claim["context"]["channels"] = [channel]
            async with limit:
                record = await kartapay.create(claim)
                await kartapay.submit(record.id, GATEWAY_CODES[n % len(GATEWAY_CODES)])
            return record.id, channel

        return dict(await asyncio.gather(*(one(n) for n in range(1, count + 1))))


async def received(http: httpx.AsyncClient, subscriber: SubscriberCase) -> dict[str, Any]:
    response = await http.get(subscriber.url + "/received")
    response.raise_for_status()
    listing: dict[str, Any] = response.json()
    return listing


async def quiet(http: httpx.AsyncClient, p: Pipeline) -> bool:
    """The sandbox has no webhook left to send and the arq queue is empty."""
    backlog = int((await http.get(p.sandbox_url + "/_sandbox/webhooks")).json()["backlog"])
    client = aioredis.Redis.from_url(p.redis_url)
    try:
        queued = await client.zcard(Settings().queue_name)
    finally:
        await client.aclose()
    return backlog == 0 and queued == 0


async def wait_for_deliveries(
    http: httpx.AsyncClient, p: Pipeline, expected: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Poll every subscriber until it has its expected count and the pipeline is idle."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    idle_since: float | None = None
    while True:
        listings = {s.id: await received(http, s) for s in p.subscribers}
        done = all(listings[sid]["count"] >= n for sid, n in expected.items())
        if done and await quiet(http, p):
            # Idle for a moment: anything still to come (a stray extra delivery) has had its
            # chance to arrive before the final read.
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                return {s.id: await received(http, s) for s in p.subscribers}
        else:
            idle_since = None
        exited = p.supervisor.first_exited()
        if exited is not None:
            raise AssertionError(f"{exited.name} exited\n{log_tails(p.supervisor)}")
        if time.monotonic() > deadline:
            counts = {sid: listing["count"] for sid, listing in listings.items()}
            raise AssertionError(
                f"deliveries incomplete: {counts} of {expected}\n{log_tails(p.supervisor)}"
            )
        await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_every_subscriber_gets_each_transition_once_in_order_despite_duplicates(
    tmp_path: Path,
) -> None:
    """200 payments with duplicated, shuffled webhooks: each subscriber receives every
    transition it subscribed to (events and channel filter) exactly once by webhook-id, in
    lifecycle order per payment, and nothing it did not subscribe to."""
    async with pipeline(tmp_path) as p, httpx.AsyncClient(timeout=10.0) as http:
        channels = await create_payments(p.sandbox_url, PAYMENTS)
        assert len(channels) == PAYMENTS
        expected = {s.id: s.expected(channels) for s in p.subscribers}
        listings = await wait_for_deliveries(
            http, p, {sid: sum(map(len, exp.values())) for sid, exp in expected.items()}
        )
        sent = (await http.get(p.sandbox_url + "/_sandbox/webhooks")).json()["data"]

    # The sandbox really did send duplicates (so exactly-once is not trivially true).
    assert any(record["copy"] > 1 for record in sent), sent[:3]
    assert expected["all-events"] and expected["web-settlements"]
    assert len(expected["web-settlements"]) == PAYMENTS // 2
    for subscriber in p.subscribers:
        listing = listings[subscriber.id]
        entries = listing["received"]
        assert listing["kept"] == listing["count"] == len(entries)  # none scrolled out
        ids = [entry["webhook_id"] for entry in entries]
        assert len(ids) == len(set(ids))  # listed once per webhook-id
        got: dict[str, list[str]] = {}
        for entry in entries:  # arrival order: first arrival of each webhook-id
            # The status is the event type's: ``data`` is the payment as fetched, which may
            # already be further along than the transition.
            assert entry["type"].startswith("payment."), entry
            got.setdefault(entry["payment_id"], []).append(entry["type"].removeprefix("payment."))
        want = expected[subscriber.id]
        missing = {pid: [s for s in want[pid] if s not in got.get(pid, [])] for pid in want}
        missing = {pid: statuses for pid, statuses in missing.items() if statuses}
        assert not missing, f"{subscriber.id}: {len(missing)} payments miss {first(missing)}"
        unwanted = {pid: sorted(set(seen) - set(want.get(pid, []))) for pid, seen in got.items()}
        unwanted = {pid: statuses for pid, statuses in unwanted.items() if statuses}
        assert not unwanted, f"{subscriber.id}: {len(unwanted)} unasked for {first(unwanted)}"
        disordered = {pid: seen for pid, seen in got.items() if seen != want[pid]}
        assert not disordered, f"{subscriber.id}: out of order {first(disordered)}"
        assert len(entries) == sum(map(len, want.values()))
    assert_logs_hold_no_secrets_or_payer_data(tmp_path / "log")


def assert_logs_hold_no_secrets_or_payer_data(log_dir: Path) -> None:
    """No process logged a payer's name or email, a whsec_ secret, a signature or the token."""
    logs = {path.name: path.read_text(errors="replace") for path in log_dir.glob("*.log")}
    assert {"service.log", "worker.log", "sandbox.log"} <= set(logs), sorted(logs)
    for name, text in logs.items():
        for needle in ("@example.com", "Demo Payer", "whsec_", "v1,", TOKEN):
            assert needle not in text, f"{name} holds {needle!r}"


def first(mapping: dict[str, list[str]], n: int = 5) -> dict[str, list[str]]:
    """The first ``n`` items, for a readable failure message."""
    return dict(list(mapping.items())[:n])
