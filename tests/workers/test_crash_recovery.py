"""No stall after a crash (issue 12, item 5; DESIGN Guarantee 8), measured: a real `kartahook
worker` process is SIGKILLed while it delivers to a slow subscriber, and while it fetches from a
slow sandbox; another worker, already running, delivers that payment to that subscriber within
10 s of the kill. The leases are 3 s (renewed every second while the work runs); the second
worker is already running when the first is killed, as another replica would be."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.events import EventHint, transition_id
from service.kartapay.client import KartaPayClient
from service.store.layout import PROCESS_EVENT, hint_job_id, payment_lock_key
from service.store.payments import TRANSITIONS_LOG_KEY
from service.store.server import free_port
from service.store.subscribers import SubscriberStore
from tests.delivery_support import Recorder, subscriber
from tests.support import arq_pool, completed_payments, serve_app, start_worker, wait_for

TOKEN = "test-token"
STEPS = ["submitted", "approved", "captured", "completed"]
LEASE_S = 3.0
RECOVERY_LIMIT_S = 10.0
SLOW_ANSWER_S = 4.0
FETCH_LATENCY_S = 20.0
SETTINGS = {"worker_lease_s": str(LEASE_S), "delivery_timeout_s": "10"}


@dataclass
class Stack:
    sandbox_url: str
    payment_id: str
    ids: list[str]
    recorder: Recorder
    log: Path
    redis_url: str

    def start_worker(self) -> tuple[subprocess.Popen[bytes], int]:
        """A `kartahook worker` process serving its probes on a port of its own."""
        port = free_port()
        process = start_worker(
            self.redis_url,
            self.sandbox_url,
            TOKEN,
            self.log,
            **SETTINGS,
            worker_metrics_port=str(port),
        )
        return process, port

    async def enqueue_hint(self) -> None:
        hint = EventHint("kartapay", f"evt-{self.payment_id}", self.payment_id, now_ms())
        async with arq_pool(self.redis_url) as pool:
            await pool.enqueue_job(PROCESS_EVENT, hint.to_job_args()[0], _job_id=hint_job_id(hint))

    def arrivals(self) -> list[float]:
        """When each request for the payment reached the subscriber (all are for it)."""
        return [r.at for r in self.recorder.requests if r.headers["webhook-id"] in self.ids]


def now_ms() -> int:
    return int(time.time() * 1000)


async def ready(port: int) -> None:
    """Wait until the worker on ``port`` has started (its probe server answers)."""

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(answers, timeout_s=60, interval_s=0.1)


@contextlib.asynccontextmanager
async def stack(
    redis_url: str, redis: aioredis.Redis, recorder: Recorder, tmp_path: Path
) -> AsyncIterator[Stack]:
    """A completed payment in a live sandbox, and ``recorder`` registered as ``ledger``."""
    async with (
        # The killed worker's requests hang on: the servers do not wait for them at shutdown.
        serve_app(
            create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01)), timeout_graceful_shutdown=1
        ) as sandbox_url,
        serve_app(recorder.app(), timeout_graceful_shutdown=1) as base,
    ):
        async with KartaPayClient(sandbox_url, TOKEN) as client:
            [payment_id] = await completed_payments(client)
        await SubscriberStore(redis).put(subscriber("ledger", base))
        ids = [transition_id(payment_id, status) for status in STEPS]
        yield Stack(sandbox_url, payment_id, ids, recorder, tmp_path / "worker.log", redis_url)


async def recovered_after(s: Stack, killed_at: float, before: int) -> float:
    """Seconds from the kill to the next request for the payment at the subscriber."""

    async def next_arrived() -> bool:
        return len(s.arrivals()) > before

    await wait_for(next_arrived, timeout_s=60, interval_s=0.01)
    return s.arrivals()[before] - killed_at


async def all_delivered_in_order(s: Stack) -> None:
    async def delivered() -> bool:
        return set(s.recorder.ids()) >= set(s.ids)

    await wait_for(delivered, timeout_s=60)
    sent = [r.headers["webhook-id"] for r in s.recorder.requests]
    assert list(dict.fromkeys(sent)) == s.ids


async def test_sigkill_mid_delivery_next_delivery_within_10s(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while the worker waits on a slow subscriber: another worker sends that payment's
    next delivery to it less than 10 s after the kill (measured), and all arrive in order."""
    recorder = Recorder(lambda _n, _b: (200, {}, SLOW_ANSWER_S))
    async with stack(redis_url, redis, recorder, tmp_path) as s:
        first, first_port = s.start_worker()
        second: subprocess.Popen[bytes] | None = None
        try:
            await ready(first_port)
            # The second worker's process starts now, but takes far longer to poll than the
            # first one takes to pick the hint up: the first one processes and sends.
            second, second_port = s.start_worker()
            await s.enqueue_hint()

            async def sending() -> bool:
                return len(s.arrivals()) >= 1

            await wait_for(sending, timeout_s=30)
            await ready(second_port)
            # Kill the moment a new request reaches the subscriber: it is then mid-delivery
            # (every answer takes 4 s, and the first worker sends the payment's steps itself).
            before = len(s.arrivals())

            async def new_request() -> bool:
                return len(s.arrivals()) > before

            await wait_for(new_request, timeout_s=SLOW_ANSWER_S + 5, interval_s=0.005)
            first.kill()
            killed_at = time.time()
            first.wait()
            in_flight = len(s.arrivals())
            assert in_flight < len(s.ids) + 1, "the kill must land mid-delivery"
            recovery_s = await recovered_after(s, killed_at, in_flight)
            print(f"\nmid-delivery kill: next delivery after {recovery_s:.2f} s")
            assert recovery_s < RECOVERY_LIMIT_S, log_tail(s.log)
            await all_delivered_in_order(s)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()


async def test_sigkill_mid_fetch_transitions_delivered_within_10s(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """SIGKILL while the worker's fetch of the payment hangs on the sandbox (20 s latency): the
    other worker fetches again once the lock's lease lapses, and the payment's first transition
    reaches the subscriber less than 10 s after the kill (measured)."""
    recorder = Recorder(lambda _n, _b: (200, {}, 0.0))
    async with stack(redis_url, redis, recorder, tmp_path) as s:
        faults = httpx.AsyncClient(base_url=s.sandbox_url)
        first, first_port = s.start_worker()
        second: subprocess.Popen[bytes] | None = None
        try:
            await ready(first_port)
            await faults.post("/_sandbox/faults", json={"latency_s": FETCH_LATENCY_S})
            second, second_port = s.start_worker()  # polls long after the first took the hint
            await s.enqueue_hint()

            async def fetching() -> bool:
                return bool(await redis.exists(payment_lock_key(s.payment_id)))

            await wait_for(fetching, timeout_s=30, interval_s=0.005)
            await ready(second_port)
            first.kill()
            killed_at = time.time()
            first.wait()
            await faults.post("/_sandbox/faults", json={"latency_s": 0.0})
            assert int(await redis.xlen(TRANSITIONS_LOG_KEY)) == 0, "the kill must land mid-fetch"
            assert s.arrivals() == []
            recovery_s = await recovered_after(s, killed_at, 0)
            print(f"\nmid-fetch kill: first delivery after {recovery_s:.2f} s")
            assert recovery_s < RECOVERY_LIMIT_S, log_tail(s.log)
            await all_delivered_in_order(s)
        finally:
            await faults.aclose()
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()


def log_tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.exists() else ""
