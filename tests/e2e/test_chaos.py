"""The chaos test (DESIGN.md "Guarantees" 1-4): the whole stack as real processes
(kartahook.stack), payments driven through their lifecycle while the processes crash.

The sandbox answers 500 and 429 to a share of API calls (the workers' fetches retry), sends
every webhook twice and shuffled, and retries a webhook that got no 2xx. Meanwhile a chaos task
SIGKILLs a random worker every few seconds and starts it again (both workers, repeatedly),
SIGKILLs Redis once (AOF, ``appendfsync always``) and starts it again on the same port and data,
and SIGKILLs the service once and starts it again. Afterwards every subscriber must have
received, deduplicated by ``webhook-id``, exactly the transitions the sandbox's final state of
each payment implies for its filter (0 missing, 0 unexpected), in lifecycle order by first
arrival, each with a signature that verifies (checked again here with ``standardwebhooks``).

``KARTAHOOK_CHAOS_SEED`` replays a run's choices (the seed is printed in the summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook, WebhookVerificationError

from kartahook.demo import demo_claim
from kartahook.stack import DemoSubscriber, Stack, isolated_env
from service.kartapay import GATEWAY_CODES, KartaPayClient
from service.kartapay.errors import ApiError, RequestTimeoutError, TransportError
from service.settings import Settings
from service.store.layout import event_field, event_key
from tests.e2e.conftest import running

T = TypeVar("T")

TOKEN = "chaos-sandbox-token"
SEED = int(os.environ.get("KARTAHOOK_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
PAYMENTS = 120
CANCEL_EVERY = 10  # every 10th payment is canceled before it is submitted
LOAD_S = 24.0  # payments are created over this long
WORKER_KILL_EVERY_S = (2.0, 4.0)  # between two worker crashes (random in this range)
REDIS_KILL_AT_S = 7.0  # after the load started
SERVICE_KILL_AT_S = 15.0
REDIS_DOWN_S = 2.0
SERVICE_DOWN_S = 1.0
DELIVERY_TIMEOUT_S = 240.0  # after the chaos ended
MAIN_LINE = ("submitted", "approved", "captured", "completed")
TERMINAL = ("failed", "canceled")
SANDBOX_ARGS = (
    "--step-delay", "0.3",
    "--fail-ratio", "0.15",
    "--error-500-ratio", "0.1",
    "--error-429-ratio", "0.1",
    "--retry-after", "1",
    "--duplicates",
    "--out-of-order",
    # The service is down for a few seconds: the sandbox keeps retrying (backoff capped at
    # 10 s) well beyond that, as a provider does.
    "--webhook-attempts", "40",
    "--seed", str(SEED),
)  # fmt: skip
# Short job timeouts: after a worker's SIGKILL arq runs its jobs again once the in-progress key
# expires (job timeout + 10 s); fast retries, so the run converges within minutes.
WORKER_ENV = {
    "KARTAHOOK_WORKER_JOB_TIMEOUT_S": "6",
    "KARTAHOOK_WORKER_DRAIN_S": "2",
    "KARTAHOOK_PROCESS_TIMEOUT_S": "5",
    "KARTAHOOK_PROCESS_BACKOFF_BASE_S": "0.5",
    "KARTAHOOK_PROCESS_BACKOFF_CAP_S": "3",
    "KARTAHOOK_DELIVERY_TIMEOUT_S": "3",
    "KARTAHOOK_DELIVERY_RETRY_SCHEDULE_S": "1,2,3",
    "KARTAHOOK_DELIVERY_RETRY_REPEAT_S": "3",
    "KARTAHOOK_DELIVERY_RETRY_HORIZON_S": "600",  # 3 s steps up to 10 min: a short list
    "KARTAHOOK_RETRY_AFTER_S": "1",
}
WORKERS = ("worker", "worker-2")


def chaos_subscribers() -> list[DemoSubscriber]:
    """Every event to one subscriber; the outcomes of channel ``web`` to the other."""
    return [
        DemoSubscriber("all-events", events=("payment.*",), keep=10_000, keep_raw=True),
        DemoSubscriber(
            "web-outcomes",
            events=("payment.captured", "payment.completed", "payment.failed", "payment.canceled"),
            channels=("web",),
            keep=10_000,
            keep_raw=True,
        ),
    ]


@dataclass
class ChaosLog:
    """What the chaos task did, for the summary."""

    kills: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f}s {what}")


@pytest.fixture
async def chaos_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Redis (AOF, fsync always), two demo subscribers, the service, two workers and a faulty
    sandbox, all started and ready; all of it stopped again after the test."""
    built = Stack(
        tmp_path,
        demo_subscribers=chaos_subscribers(),
        token=TOKEN,
        redis_appendonly=True,
        redis_appendfsync="always",
        base_env=isolated_env(WORKER_ENV),
        sandbox_args=SANDBOX_ARGS,
        workers=len(WORKERS),
        grace_s=5.0,
    )
    async with running(built):
        yield built


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again while the sandbox answers an injected 500 or 429 (they are answered
    before the request is handled, so a retry is safe)."""
    for _ in range(100):
        try:
            return await call()
        except ApiError as exc:
            if exc.status_code not in (429, 500):
                raise
        except (TransportError, RequestTimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the sandbox kept failing")


async def drive_payments(sandbox_url: str) -> dict[str, str]:
    """Create ``PAYMENTS`` payments spread over ``LOAD_S``, half on channel ``web``; submit
    each with a plan code, or cancel every ``CANCEL_EVERY``-th. Payment id -> channel."""
    limit = asyncio.Semaphore(8)
    async with KartaPayClient(sandbox_url, TOKEN, timeout=30.0) as kartapay:

        async def one(n: int) -> tuple[str, str]:
            await asyncio.sleep(LOAD_S * n / PAYMENTS)
            channel = "web" if n % 2 else "pos"
            claim = demo_claim(n)
            claim["context"]["channels"] = [channel]
            async with limit:
                record = await retrying(lambda: kartapay.create(claim))
                if n % CANCEL_EVERY == 0:
                    await retrying(lambda: kartapay.cancel(record.id))
                else:
                    code = GATEWAY_CODES[n % len(GATEWAY_CODES)]
                    await retrying(lambda: kartapay.submit(record.id, code))
            return record.id, channel

        return dict(await asyncio.gather(*(one(n) for n in range(1, PAYMENTS + 1))))


async def chaos(stack: Stack, log: ChaosLog, rng: random.Random, until: asyncio.Event) -> None:
    """Crash and restart: a random worker every few seconds (each at least twice), Redis once
    and the service once, until ``until`` is set and every crash has happened."""
    redis_done = service_done = False
    turn = 0
    while True:
        elapsed = time.monotonic() - log.started
        if not redis_done and elapsed >= REDIS_KILL_AT_S:
            redis_done = True
            await stack.kill_redis()
            log.kills["redis"] += 1
            log.note("SIGKILL redis")
            await asyncio.sleep(REDIS_DOWN_S)
            await stack.restart_redis()
            log.restarts["redis"] += 1
            log.note("redis restarted (AOF replayed)")
        elif not service_done and elapsed >= SERVICE_KILL_AT_S:
            service_done = True
            await stack.kill("service")
            log.kills["service"] += 1
            log.note("SIGKILL service")
            await asyncio.sleep(SERVICE_DOWN_S)
            await stack.restart("service")
            log.restarts["service"] += 1
            log.note("service restarted")
        else:
            # Alternate in random pairs, so both workers die repeatedly, sometimes twice in a row.
            name = WORKERS[turn % 2] if rng.random() < 0.7 else WORKERS[(turn + 1) % 2]
            turn += 1
            await stack.kill(name)
            log.kills[name] += 1
            log.note(f"SIGKILL {name}")
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            await stack.restart(name)
            log.restarts[name] += 1
            log.note(f"{name} restarted")
        finished = redis_done and service_done and all(log.kills[w] >= 2 for w in WORKERS)
        if until.is_set() and finished:
            return
        await asyncio.sleep(rng.uniform(*WORKER_KILL_EVERY_S))


async def final_payments(sandbox_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each payment as the sandbox has it once it is final (completed, failed or canceled)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 60.0
    found: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=sandbox_url, headers=headers, timeout=10.0) as http:
        while len(found) < len(ids):
            for pid in ids:
                if pid in found:
                    continue
                response = await http.get(f"/v1/payments/{pid}")
                if response.status_code in (429, 500):
                    continue  # injected
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                if body["status"] in ("completed", *TERMINAL):
                    found[pid] = body
            assert time.monotonic() < deadline, f"{len(ids) - len(found)} payments never final"
            await asyncio.sleep(0.2)
    return found


def lifecycle_of(payment: dict[str, Any]) -> list[str]:
    """The transitions a final payment went through, in lifecycle order, from its own
    timestamps (``init`` is never a transition)."""
    steps = [s for s in MAIN_LINE if payment.get(f"{s}At")]
    if payment["status"] in TERMINAL:
        steps.append(payment["status"])
    return steps


def expected_for(
    subscriber: DemoSubscriber, payments: dict[str, dict[str, Any]], channels: dict[str, str]
) -> dict[str, list[str]]:
    """Per payment, the statuses ``subscriber`` must receive, in lifecycle order."""
    expected: dict[str, list[str]] = {}
    for pid, payment in payments.items():
        if subscriber.channels is not None and channels[pid] not in subscriber.channels:
            continue
        wanted = [
            s
            for s in lifecycle_of(payment)
            if any(fnmatch.fnmatchcase(f"payment.{s}", p) for p in subscriber.events)
        ]
        if wanted:
            expected[pid] = wanted
    return expected


@dataclass
class Verdict:
    """One subscriber's deliveries compared with what it should have."""

    got: dict[str, list[str]]
    missing: dict[str, list[str]]
    unexpected: dict[str, list[str]]
    disordered: dict[str, list[str]]

    @property
    def complete(self) -> bool:
        return not self.missing


def judge(listing: dict[str, Any], want: dict[str, list[str]]) -> Verdict:
    """Statuses received per payment (first arrival of each webhook-id) against ``want``."""
    got: dict[str, list[str]] = {}
    for entry in listing["received"]:
        got.setdefault(str(entry["payment_id"]), []).append(str(entry["status"]))
    missing = {
        pid: [s for s in statuses if s not in got.get(pid, [])] for pid, statuses in want.items()
    }
    unexpected = {pid: [s for s in seen if s not in want.get(pid, [])] for pid, seen in got.items()}
    disordered = {pid: seen for pid, seen in got.items() if seen != want.get(pid, [])}
    return Verdict(
        got,
        {pid: s for pid, s in missing.items() if s},
        {pid: s for pid, s in unexpected.items() if s},
        disordered,
    )


async def listing_of(http: httpx.AsyncClient, subscriber: DemoSubscriber) -> dict[str, Any]:
    response = await http.get(subscriber.base_url() + "/received")
    response.raise_for_status()
    listing: dict[str, Any] = response.json()
    return listing


async def idle(http: httpx.AsyncClient, stack: Stack) -> bool:
    """The sandbox has no webhook left to send and the arq queue is empty."""
    backlog = int((await http.get(stack.sandbox_url + "/_sandbox/webhooks")).json()["backlog"])
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        queued = await client.zcard(Settings().queue_name)
    finally:
        await client.aclose()
    return backlog == 0 and queued == 0


async def wait_for_convergence(
    http: httpx.AsyncClient, stack: Stack, expected: dict[str, dict[str, list[str]]]
) -> dict[str, dict[str, Any]]:
    """Poll until no subscriber misses a transition and the pipeline is idle (then a moment
    more, for any stray extra delivery); the listings then."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    idle_since: float | None = None
    while True:
        listings = {s.id: await listing_of(http, s) for s in stack.demo_subscribers}
        verdicts = {sid: judge(listings[sid], want) for sid, want in expected.items()}
        if all(v.complete for v in verdicts.values()) and await idle(http, stack):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2.0:
                return {s.id: await listing_of(http, s) for s in stack.demo_subscribers}
        else:
            idle_since = None
        exited = stack.supervisor.first_exited()
        if exited is not None:
            raise AssertionError(f"{exited.name} exited\n{stack.log_tails()}")
        if time.monotonic() > deadline:
            missing = {sid: first(v.missing) for sid, v in verdicts.items() if v.missing}
            counts = {sid: sum(map(len, v.missing.values())) for sid, v in verdicts.items()}
            raise AssertionError(
                f"seed {SEED}: transitions still missing after {DELIVERY_TIMEOUT_S:.0f} s: "
                f"{counts}, e.g. {missing}\n{stack.log_tails()}"
            )
        await asyncio.sleep(0.5)


def bad_signatures(subscriber: DemoSubscriber, listing: dict[str, Any]) -> list[str]:
    """Webhook-ids whose kept body and headers do not verify with ``standardwebhooks``
    (the project's own signing code is not used for this check)."""
    verifier = Webhook(subscriber.secret)
    bad = []
    for entry in listing["received"]:
        raw = entry["raw"]
        try:
            verifier.verify(raw["body"], raw["headers"])
        except WebhookVerificationError:
            bad.append(entry["webhook_id"])
    return bad


def webhook_answers(log_path: Path) -> tuple[Counter[str], set[tuple[str, str]]]:
    """What the service answered the sandbox's webhook attempts, from the sandbox's log:
    HTTP statuses (``error`` for a connection that failed), and the (payment id, webhook-id)
    of those answered 2xx."""
    answers: Counter[str] = Counter()
    acknowledged: set[tuple[str, str]] = set()
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "webhook sent":
                answers[str(record.get("status"))] += 1
                if 200 <= int(record.get("status", 0)) < 300:
                    acknowledged.add((str(record["payment_id"]), str(record["webhook_id"])))
            elif record.get("event") == "webhook attempt failed":
                answers["error"] += 1
    return answers, acknowledged


async def forgotten(redis_url: str, webhooks: set[tuple[str, str]]) -> list[str]:
    """The acknowledged webhook-ids (with their payment ids) whose dedupe marker (their field
    in their payment's event hash, written in the same Lua call as the job, before the 2xx) is
    not in Redis."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = sorted(webhooks)
        async with client.pipeline(transaction=False) as pipe:
            for payment_id, webhook_id in ids:
                pipe.hexists(event_key(payment_id), event_field("kartapay", webhook_id))
            found = await pipe.execute()
    finally:
        await client.aclose()
    return [webhook_id for (_, webhook_id), hit in zip(ids, found, strict=True) if not hit]


@pytest.mark.timeout(600)
async def test_no_transition_is_lost_or_disordered_while_processes_crash(
    chaos_stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under load, with API faults and duplicated, shuffled webhooks, while both workers are
    SIGKILLed repeatedly and Redis and the service once each: every subscriber gets exactly the
    transitions of each payment's final state it subscribed to, in lifecycle order by first
    arrival, each signature verifies, and no webhook answered 2xx is lost."""
    stack = chaos_stack
    rng = random.Random(SEED)
    log = ChaosLog()
    load_done = asyncio.Event()
    chaos_task = asyncio.create_task(chaos(stack, log, rng, load_done))
    try:
        channels = await drive_payments(stack.sandbox_url)
        payments = await final_payments(stack.sandbox_url, list(channels))
    finally:
        load_done.set()
    await chaos_task
    chaos_s = time.monotonic() - log.started
    expected = {s.id: expected_for(s, payments, channels) for s in stack.demo_subscribers}
    async with httpx.AsyncClient(timeout=10.0) as http:
        listings = await wait_for_convergence(http, stack, expected)
    converged_s = time.monotonic() - log.started
    answers, acknowledged = webhook_answers(tmp_path / "log" / "sandbox.log")
    lost = await forgotten(stack.redis_url, acknowledged)
    await stack.stop()
    finals = Counter(p["status"] for p in payments.values())

    lines = [
        f"chaos seed {SEED}: {PAYMENTS} payments {dict(finals)}",
        f"  kills {dict(log.kills)}, restarts {dict(log.restarts)}",
        f"  webhook answers to the sandbox {dict(answers)} (503s: {answers['503']}); "
        f"{len(acknowledged)} webhook-ids acknowledged, {len(lost)} of them lost",
        f"  chaos {chaos_s:.1f} s, all delivered {converged_s:.1f} s after the start",
    ]
    for subscriber in stack.demo_subscribers:
        listing = listings[subscriber.id]
        lines.append(
            f"  {subscriber.id}: {listing['count']} deliveries, {listing['duplicates']} "
            f"duplicates by webhook-id, rejected {listing['rejected']}"
        )
    lines += [f"    {event}" for event in log.events]
    with capsys.disabled():
        print("\n" + "\n".join(lines))

    # The chaos really happened, and the faults really were injected.
    assert log.kills["redis"] == log.restarts["redis"] == 1
    assert log.kills["service"] == log.restarts["service"] == 1
    assert all(log.kills[w] >= 2 for w in WORKERS), log.kills
    assert finals["completed"] and finals["failed"] and finals["canceled"], finals
    assert expected["all-events"] and expected["web-outcomes"]
    # Guarantee 1, directly: every webhook answered 2xx is still in Redis after its SIGKILL
    # (the subscribers' view alone could hide a loss behind a later fetch of the payment).
    assert len(acknowledged) >= sum(map(len, (lifecycle_of(p) for p in payments.values())))
    assert lost == [], f"seed {SEED}: {len(lost)} acknowledged webhooks lost, e.g. {lost[:5]}"
    for subscriber in stack.demo_subscribers:
        listing = listings[subscriber.id]
        want = expected[subscriber.id]
        verdict = judge(listing, want)
        where = f"seed {SEED}, {subscriber.id}"
        assert listing["kept"] == listing["count"] == len(listing["received"]), where
        ids = [entry["webhook_id"] for entry in listing["received"]]
        assert len(ids) == len(set(ids)), where
        assert not verdict.missing, f"{where}: missing {first(verdict.missing)}"
        assert not verdict.unexpected, f"{where}: unexpected {first(verdict.unexpected)}"
        assert not verdict.disordered, f"{where}: out of order {first(verdict.disordered)}"
        assert listing["count"] == sum(map(len, want.values())), where
        assert listing["rejected"] == {}, f"{where}: rejected {listing['rejected']}"
        assert bad_signatures(subscriber, listing) == [], where


def first(mapping: dict[str, list[str]], n: int = 5) -> dict[str, list[str]]:
    """The first ``n`` items, for a readable failure message."""
    return dict(list(mapping.items())[:n])
