"""Issue 12 item 4, the must-show: a Sentinel failover under a steady flow of webhooks loses no
acknowledged webhook.

Real processes on 127.0.0.1, all password-protected: a ``redis-server`` primary and replica and
three Sentinels (``tests.sentinel_support``), ``kartahook serve`` with
``KARTAHOOK_REDIS_MIN_REPLICAS=1``, ``kartahook worker``, the sandbox as KartaPay and a recording
subscriber (from a subscribers file). A sender posts signed KartaPay webhooks, each a hint for a
payment of its own; mid-flow the primary is SIGKILLed. The Sentinels promote the replica; the
dead node comes back as a replica of the new primary (as a supervisor would restart it: with
one replica required, 2xx can only resume once the new primary has a replica again). Every
webhook answered 2xx must reach the subscriber with all its transitions; the service and the
worker never exit. The measured window of 503s is printed (``-s``) and written to the log.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from sandbox.kartapay_api import SandboxConfig, create_app
from service.domain.signing import generate_secret, sign_headers
from service.kartapay.client import KartaPayClient
from service.store.server import free_port
from tests.delivery_support import Recorder
from tests.sentinel_support import SentinelCluster
from tests.support import completed_payments, serve_app, start_kartahook, wait_for

TOKEN = "failover-test-token"
EXPECTED_TYPES = {"payment.submitted", "payment.approved", "payment.captured", "payment.completed"}
PAYMENTS = 400  # more than the sender can use: each webhook has a payment of its own
SEND_INTERVAL_S = 0.04
STEADY_BEFORE_KILL = 30  # 2xx answers before the primary is killed
STEADY_AFTER = 20  # consecutive 2xx answers after the failover before the flow stops


@dataclass
class Flow:
    """What the sender saw: each answer's (time answered, payment, status)."""

    answers: list[tuple[float, str, int]] = field(default_factory=list)

    def acknowledged(self) -> set[str]:
        return {payment for _, payment, status in self.answers if 200 <= status < 300}

    def count(self, since: float = 0.0, ok: bool = True) -> int:
        return sum(
            1 for at, _, status in self.answers if at >= since and (200 <= status < 300) == ok
        )

    def trailing_2xx(self) -> int:
        run = 0
        for _, _, status in reversed(self.answers):
            if not 200 <= status < 300:
                break
            run += 1
        return run


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A primary, a replica and three Sentinels of its own (this test kills the primary)."""
    with SentinelCluster(tmp_path / "sentinel", down_after_ms=1000, failover_timeout_ms=5000) as c:
        yield c


def child_env(**values: str) -> dict[str, str]:
    """Our environment without KARTAHOOK_ settings, plus ``values`` as KARTAHOOK_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")}
    return {**env, "PYTHONUNBUFFERED": "1", **{f"KARTAHOOK_{k}": v for k, v in values.items()}}


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(420)
async def test_failover_under_load_loses_no_acknowledged_webhook(
    cluster: SentinelCluster, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """After the primary is SIGKILLed mid-flow, every webhook answered 2xx is processed and
    delivered, 2xx answers resume after the failover, and serve and worker never exit."""
    url = cluster.url()
    webhook_secret = generate_secret()
    subscriber_secret = generate_secret()
    recorder = Recorder()
    sources = tmp_path / "sources.yaml"
    sources.write_text(f'sources:\n  kartapay: {{secrets: ["{webhook_secret}"]}}\n')
    port, admin_port = free_port(), free_port()
    service_log, worker_log = tmp_path / "service.log", tmp_path / "worker.log"
    processes: list[subprocess.Popen[bytes]] = []
    flow = Flow()
    try:
        async with (
            serve_app(create_app(SandboxConfig(token=TOKEN, step_delay_s=0.01))) as sandbox_url,
            serve_app(recorder.app()) as subscriber_url,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
        ):
            subscribers = tmp_path / "subscribers.yaml"
            subscribers.write_text(
                "subscribers:\n"
                f"  - id: recorder\n    url: {subscriber_url}/hook\n"
                f'    secret: "{subscriber_secret}"\n    events: ["payment.*"]\n'
            )
            async with KartaPayClient(sandbox_url, TOKEN) as kartapay:
                payments = await completed_payments(kartapay, PAYMENTS)

            service = start_kartahook(
                [
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--admin-port",
                    str(admin_port),
                ],
                child_env(
                    REDIS_URL=url,
                    SOURCES_FILE=str(sources),
                    REDIS_MIN_REPLICAS="1",
                ),
                service_log,
            )
            processes.append(service)
            worker = start_kartahook(
                ["worker"],
                child_env(
                    REDIS_URL=url,
                    KARTAPAY_URL=sandbox_url,
                    KARTAPAY_TOKEN=TOKEN,
                    SUBSCRIBERS_FILE=str(subscribers),
                    WORKER_POLL_DELAY_S="0.05",
                    WORKER_JOB_TIMEOUT_S="15",
                    PROCESS_BACKOFF_BASE_S="0.5",
                    PROCESS_BACKOFF_CAP_S="2",
                    DELIVERY_TIMEOUT_S="2",
                    DELIVERY_RETRY_SCHEDULE_S="0.5,1,1,2,2,2",
                    DELIVERY_JITTER="0",
                ),
                worker_log,
            )
            processes.append(worker)

            def alive() -> None:
                assert service.poll() is None, "serve exited:\n" + service_log.read_text()[-4000:]
                assert worker.poll() is None, "worker exited:\n" + worker_log.read_text()[-4000:]

            async def ready() -> bool:
                alive()
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout_s=60)

            async def send(payment_id: str) -> int:
                body = orjson.dumps(
                    {"type": "payment.captured", "data": {"id": payment_id, "status": "captured"}}
                )
                headers = {
                    "content-type": "application/json",
                    **sign_headers(webhook_secret, f"msg_{uuid.uuid4().hex}", body),
                }
                try:
                    answer = await http.post("/v1/webhooks/kartapay", content=body, headers=headers)
                except httpx.TransportError:
                    return 0  # not answered: not acknowledged either
                return answer.status_code

            unsent = iter(payments)
            stop_sending = asyncio.Event()

            async def sender() -> None:
                while not stop_sending.is_set():
                    payment_id = next(unsent, None)
                    assert payment_id is not None, "ran out of payments before 2xx resumed"
                    status = await send(payment_id)
                    flow.answers.append((time.monotonic(), payment_id, status))
                    await asyncio.sleep(SEND_INTERVAL_S)

            sending = asyncio.create_task(sender())
            try:

                async def steady() -> bool:
                    alive()
                    return flow.count() >= STEADY_BEFORE_KILL

                await wait_for(steady, timeout_s=60)
                old_primary = cluster.primary
                old_port = old_primary.port
                killed_at = time.monotonic()
                old_primary.stop(kill=True)  # SIGKILL

                async def promoted() -> bool:
                    alive()
                    port_now = await asyncio.to_thread(cluster.master_port)
                    return port_now is not None and port_now != old_port

                await wait_for(promoted, timeout_s=60)
                promoted_at = time.monotonic()
                # The dead node returns (a supervisor restarts it) as a replica of the new one.
                await asyncio.to_thread(cluster.restart_as_replica, old_primary)
                rejoined_at = time.monotonic()

                async def resumed() -> bool:
                    alive()
                    assert not sending.done() or sending.exception() is None
                    return (
                        flow.count(since=rejoined_at) >= 1 and flow.trailing_2xx() >= STEADY_AFTER
                    )

                await wait_for(resumed, timeout_s=90)
            finally:
                stop_sending.set()
                await sending

            refused = [(at, status) for at, _, status in flow.answers if not 200 <= status < 300]
            assert {status for _, status in refused} <= {0, 503}, refused
            first_2xx_after = min(
                at for at, _, status in flow.answers if at > killed_at and 200 <= status < 300
            )
            last_refused = max((at for at, _ in refused), default=killed_at)
            report = (
                f"failover: {len(flow.answers)} webhooks sent, "
                f"{len(flow.acknowledged())} answered 2xx, {len(refused)} refused (503); "
                f"promotion {promoted_at - killed_at:.1f} s after the SIGKILL, the old node back "
                f"in sync {rejoined_at - killed_at:.1f} s after it; 503s from "
                f"{min((at for at, _ in refused), default=killed_at) - killed_at:.1f} s to "
                f"{last_refused - killed_at:.1f} s, 2xx again {first_2xx_after - killed_at:.1f} s "
                "after the SIGKILL"
            )
            print(report)
            record_property("failover_2xx_again_after_s", round(first_2xx_after - killed_at, 2))
            (tmp_path / "failover-report.txt").write_text(report + "\n")

            acknowledged = flow.acknowledged()

            def undelivered() -> dict[str, set[str]]:
                got: dict[str, set[str]] = {}
                for received in recorder.delivered():
                    data = received.json
                    got.setdefault(data["data"]["id"], set()).add(data["type"])
                return {
                    payment: EXPECTED_TYPES - got.get(payment, set())
                    for payment in acknowledged
                    if not got.get(payment, set()) >= EXPECTED_TYPES
                }

            async def all_delivered() -> bool:
                alive()
                return not undelivered()

            try:
                await wait_for(all_delivered, timeout_s=180)
            except AssertionError as exc:
                missing = undelivered()
                raise AssertionError(
                    f"{len(missing)} of {len(acknowledged)} acknowledged webhooks not delivered "
                    f"({report}): {sorted(missing.items())[:5]}\n" + worker_log.read_text()[-3000:]
                ) from exc
            alive()
    finally:
        for process in reversed(processes):
            await asyncio.to_thread(stop, process)
    for log in (service_log, worker_log):
        text = log.read_text()
        assert "Traceback" not in text, text[-4000:]
        assert cluster.password not in text and cluster.sentinel_password not in text
