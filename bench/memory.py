"""Redis memory benchmark (issue 14): what Redis holds per webhook and per payment.

``python -m bench.memory [--payments N] [--parked N]`` (also run by ``make bench``) measures, with
real processes started by the one stack builder (:class:`kartahook.stack.Stack`: embedded Redis,
``kartahook serve``, ``kartahook worker``, the sandbox, one receiver process serving every
subscriber's URL):

1. **Bytes per queued event.** A stack with no worker; ``--payments`` payments are created in the
   sandbox and driven to ``completed``; the sandbox sends its real, signed KartaPay webhooks
   (one per change of status, each carrying the full payment body) to the service, which stores
   and queues them. Redis ``used_memory`` delta / events (without the clients' buffers, the
   AOF buffer and the scripts cache: fixed costs; the plain delta is printed too), plus a
   census of every key by pattern of ``service.store.layout.KEY_PATTERNS``: count, ``MEMORY
   USAGE`` (``SAMPLES 0``) averaged over a sample of each pattern's keys x count, and how many
   keys have no TTL.
2. **Bytes per payment at rest**, with 1 and with 3 subscribers (``payment.*``): a worker is then
   started on the same stack; once every subscriber received every transition, and the queue
   and the in-flight/parked sets are empty (every delivery finished), ``used_memory`` delta /
   payments and the same census (which patterns keep keys with no TTL at rest).
3. **Jobs per breaker cycle during an outage** (``--outage-only``: this part alone, printed).
   One subscriber whose server answers 500, beside a healthy one; ``--parked`` payments parked
   behind its open breaker (cool-down ``--cooldown``, 10 s; a retry schedule that keeps every
   delivery pending). Over a few cool-downs (each ``open_until`` value of the breaker hash is
   one cycle), the down subscriber's job runs counted from the worker's own metrics
   (``kartahook_deliveries_total`` + ``kartahook_delivery_deferred_total`` +
   ``kartahook_delivery_wakes_total``, its label only) and the peak number of its jobs
   (``fdl:*``, ``fwk:*``) due in the arq queue. Then the server recovers and every transition
   must arrive, in lifecycle order for each payment (the most jobs due at once meanwhile: the
   release rate); the healthy subscriber's deliveries are counted before the recovery.
4. **Projection** for 1 million payments a day at steady state: each key kind's bytes per payment
   at rest x the days it lives (its TTL from the settings), summed; keys without a TTL grow
   without bound and are reported per day.

It prints the tables and writes them into ``bench/results.md`` (its own section, between markers)
and ``docs/benchmarks.md`` ("Memory", between markers), beside issue 14's goals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import re
import shutil
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.e2e import TOKEN, child_env, completed_payments
from service.store import layout

STATUSES = ("submitted", "approved", "captured", "completed")
RESULTS_PATH = Path(__file__).with_name("results.md")
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "memory"
DAY_S = 86_400
PAYMENTS_PER_DAY = 1_000_000
# Issue 14's goals, beside the measured values.
GOAL_QUEUED_B = 1536
GOAL_REST_3SUB_B = 2048
GOAL_JOBS_PER_CYCLE = 20
GOAL_PARKED = 2000
# Patterns allowed to keep keys without a TTL at rest (issue 14): the arq queue, capped streams
# and lists, operator items (dead letters) and configuration (the subscribers registry).
NO_TTL_ALLOWED = (
    layout.QUEUE,
    layout.UNROUTABLE,
    layout.TRANSITIONS,
    layout.ATTEMPT_LOG,
    layout.DEAD_ALL,
    layout.DEAD,
    layout.EVENT_DLQ_ENTRIES,
    layout.EVENT_DLQ_INDEX,
    layout.SUBSCRIBERS,
    layout.SUBSCRIBERS_VERSION,
    layout.BREAKER,
    layout.HISTORY_PAYMENTS,
)
# Capped streams and lists: constant at scale, whatever the number of payments. History's
# payments list is capped too, but at a cap (history_index_max) meant to hold days of payments:
# it is counted per payment, with the timelines in the state hashes.
CAPPED = (
    layout.UNROUTABLE,
    layout.TRANSITIONS,
    layout.ATTEMPT_LOG,
)
SAMPLE_KEYS = 200
Report = Callable[[str], None]


# --- the receiver: one process, every subscriber's path; can answer 500 -----------------------


class Receiver:
    """Records each delivery (path, webhook-id, payment id, type) and answers 204, or 500 while
    failing (``POST /_fail`` with ``on``/``off``, or a path: only that one fails)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, str]] = []
        self.failing = False
        self.failing_path: str | None = None
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        path = scope["path"]
        body = b"".join(chunks)
        if path == "/_fail":
            # ``on``: every path answers 500; ``/<path>``: that path only; ``off``: none.
            self.failing = body == b"on" or body.startswith(b"/")
            self.failing_path = body.decode() if body.startswith(b"/") else None
            await self._answer(send, 200, b"ok")
        elif path == "/_count":
            await self._answer(send, 200, str(len(self.records)).encode())
        elif path == "/_refused":
            await self._answer(send, 200, str(self.refused).encode())
        elif path == "/_records":
            await self._answer(send, 200, orjson.dumps(self.records))
        elif scope["method"] == "POST":
            if self.failing and self.failing_path in (None, path):
                self.refused += 1
                await self._answer(send, 500, b"down")
                return
            headers = dict(scope["headers"])
            event = orjson.loads(body)
            webhook_id = headers.get(b"webhook-id", b"").decode()
            self.records.append((path, webhook_id, event["data"]["id"], event["type"]))
            await self._answer(send, 204, b"")
        else:
            await self._answer(send, 200, b"ok")

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})


def receiver_app() -> Receiver:
    return Receiver()


def serve_receiver(port: int) -> None:
    from kartahook.commands.serve import serve, uvicorn_options

    serve("bench.memory:receiver_app", uvicorn_options("127.0.0.1", port, 1, 5.0))


# --- the key census -----------------------------------------------------------------------------


@dataclass
class PatternRow:
    """The keys of one pattern of ``KEY_PATTERNS`` (or ``(other)``) at one moment."""

    pattern: str
    type: str
    ttl: str
    keys: int = 0
    no_ttl: int = 0
    sampled: int = 0
    sampled_bytes: int = 0
    max_ttl_s: int = -1  # the longest TTL seen on its keys (-1: none has one)

    @property
    def avg_bytes(self) -> float:
        return self.sampled_bytes / self.sampled if self.sampled else 0.0

    @property
    def total_bytes(self) -> float:
        return self.avg_bytes * self.keys


# Redis ``INFO memory`` fields kept with each census. ``used_memory`` counts, beside the keys,
# the buffers of the connected clients (the worker's pool: fixed, not per payment), the AOF
# buffer and the scripts cache; those are taken out of the per-item figure (and shown).
MEMORY_FIELDS = ("used_memory", "mem_clients_normal", "mem_aof_buffer", "used_memory_scripts")


def items_bytes(info: dict[str, int]) -> int:
    """``used_memory`` without the clients' buffers, the AOF buffer and the scripts cache."""
    return info["used_memory"] - sum(info[name] for name in MEMORY_FIELDS[1:])


@dataclass
class Census:
    info: dict[str, int]
    rows: dict[str, PatternRow]

    @property
    def used_memory(self) -> int:
        return self.info["used_memory"]

    def no_ttl_patterns(self) -> list[str]:
        return [r.pattern for r in self.rows.values() if r.no_ttl]

    def row(self, pattern: str) -> PatternRow:
        return self.rows.get(pattern) or PatternRow(pattern, "", "")


def pattern_matchers(queue: str) -> list[tuple[re.Pattern[str], str]]:
    """(regex, pattern) for every pattern of the layout, the arq queue's name filled in."""
    from service.store.layout import KEY_PATTERNS

    matchers = []
    for kp in KEY_PATTERNS:
        regex = ""
        for literal, name, _, _ in string.Formatter().parse(kp.pattern):
            regex += re.escape(literal)
            if name == "queue":
                regex += re.escape(queue)
            elif name is not None:
                regex += ".+"
        matchers.append((re.compile(regex), kp.pattern))
    return matchers


def classify(key: str, matchers: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """The layout pattern ``key`` belongs to (the first that matches it whole), or ``(other)``."""
    return next((pattern for regex, pattern in matchers if regex.fullmatch(key)), "(other)")


async def memory_info(redis: Any) -> dict[str, int]:
    """The :data:`MEMORY_FIELDS` of ``INFO memory``."""
    info = await redis.info("memory")
    return {name: int(info.get(name, 0)) for name in MEMORY_FIELDS}


async def census(redis: Any, queue: str, sample: int = SAMPLE_KEYS) -> Census:
    """Every key by pattern: count, keys without a TTL, ``MEMORY USAGE`` of a sample of them."""
    from service.store.layout import KEY_PATTERNS

    matchers = pattern_matchers(queue)
    rows = {kp.pattern: PatternRow(kp.pattern, kp.type, kp.ttl) for kp in KEY_PATTERNS}
    keys: list[str] = []
    async for key in redis.scan_iter(count=1000):
        keys.append(key.decode() if isinstance(key, bytes) else key)
    by_pattern: dict[str, list[str]] = {}
    for key in keys:
        by_pattern.setdefault(classify(key, matchers), []).append(key)
    for pattern, members in by_pattern.items():
        row = rows.setdefault(pattern, PatternRow(pattern, "?", "?"))
        row.keys = len(members)
        ttls = []
        for start in range(0, len(members), 1000):
            pipe = redis.pipeline(transaction=False)
            for key in members[start : start + 1000]:
                pipe.ttl(key)
            ttls += await pipe.execute()
        row.no_ttl = sum(1 for t in ttls if t == -1)
        row.max_ttl_s = max([-1, *ttls])
        pipe = redis.pipeline(transaction=False)
        chosen = members[:: max(1, len(members) // sample)][:sample]
        for key in chosen:
            pipe.execute_command("MEMORY USAGE", key, "SAMPLES", 0)
        sizes = [int(s) for s in await pipe.execute() if s is not None]
        row.sampled, row.sampled_bytes = len(sizes), sum(sizes)
    return Census(await memory_info(redis), rows)


async def reloaded_bytes(redis: Any, workdir: Path) -> int:
    """What the data itself costs: the server's dataset is saved (``SAVE``) and loaded into a
    fresh ``redis-server``; its ``used_memory`` minus the same server's once flushed.

    The live server's delta also holds what the run's peak left behind: Redis sizes its key
    dicts (keys and expires) in powers of two for the most keys it held at once, and shrinks
    them only below 10 % fill, so a short run that queued and delivered a burst measures the
    burst's tables too. A fresh load sizes them for the keys there are, as a long-running
    server at steady state would."""
    from service.store.client import redis_client
    from service.store.server import RedisServer

    await redis.execute_command("SAVE")
    source = Path((await redis.config_get("dir"))["dir"]) / "dump.rdb"
    target = workdir / f"reloaded-{time.monotonic_ns()}"
    target.mkdir(parents=True)
    shutil.copy(source, target / "dump.rdb")
    server = RedisServer(target, appendonly=False).start(timeout_s=60)
    try:
        client = redis_client(server.url)
        try:
            loaded = await memory_info(client)
            await client.flushall()
            empty = await memory_info(client)
        finally:
            await client.aclose()
    finally:
        server.stop()
        shutil.rmtree(target, ignore_errors=True)
    return items_bytes(loaded) - items_bytes(empty)


# --- 1 and 2: queued, then at rest ----------------------------------------------------------------


@dataclass
class Lifecycle:
    """Queued and at-rest measurements of one stack."""

    subscribers: int
    payments: int
    events: int = 0
    baseline: dict[str, int] = field(default_factory=dict)
    queued: Census | None = None
    rest: Census | None = None
    deliveries: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    rest_wait_s: float = 0.0
    leftover_jobs: int = 0
    queued_reloaded: int = 0  # reloaded_bytes() queued
    rest_reloaded: int = 0  # reloaded_bytes() at rest

    @property
    def queued_reloaded_per_event(self) -> float:
        return self.queued_reloaded / max(self.events, 1)

    @property
    def rest_reloaded_per_payment(self) -> float:
        return self.rest_reloaded / max(self.payments, 1)

    @property
    def capped_per_payment(self) -> float:
        """Bytes per payment at rest in capped streams and lists (constant beyond their cap)."""
        assert self.rest is not None
        return sum(self.rest.row(p).total_bytes for p in CAPPED) / max(self.payments, 1)

    @property
    def rest_goal_per_payment(self) -> float:
        """What issue 14's at-rest goal is judged on: the reloaded dataset per payment, without
        the capped streams and lists (at 1 M payments a day they are a constant few MB; over
        500 payments they weigh as much as a payment's own keys)."""
        return self.rest_reloaded_per_payment - self.capped_per_payment

    @property
    def queued_per_event(self) -> float:
        """(items' ``used_memory`` queued - empty) / events."""
        assert self.queued is not None
        return (items_bytes(self.queued.info) - items_bytes(self.baseline)) / max(self.events, 1)

    @property
    def rest_per_payment(self) -> float:
        """(items' ``used_memory`` at rest - empty) / payments."""
        assert self.rest is not None
        return (items_bytes(self.rest.info) - items_bytes(self.baseline)) / max(self.payments, 1)

    def raw_delta(self, snapshot: Census, per: int) -> float:
        """The plain ``used_memory`` delta / ``per``, client buffers and all."""
        return (snapshot.used_memory - self.baseline["used_memory"]) / max(per, 1)


def receiver_spec(port: int) -> Any:
    from kartahook.supervisor import ChildSpec, http_ok

    return ChildSpec(
        "receiver",
        [sys.executable, "-m", "bench.memory", "--receiver", str(port)],
        child_env({}),
        http_ok(f"http://127.0.0.1:{port}/healthz"),
    )


async def receiver_records(http: httpx.AsyncClient, url: str) -> list[tuple[str, ...]]:
    return [tuple(r) for r in orjson.loads((await http.get(url + "/_records")).content)]


async def wait_until(
    check: Callable[[], Any], timeout_s: float, what: str, stack: Any = None, poll_s: float = 0.1
) -> None:
    """Poll the async ``check`` until it is true; a child's exit or the deadline raises."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if stack is not None and (child := stack.supervisor.first_exited()) is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)


def order_problems(records: Sequence[tuple[str, ...]]) -> tuple[int, int, int]:
    """(unique deliveries, duplicates, (subscriber, payment) lines whose first arrivals are not
    in lifecycle order) of the receiver's records."""
    seen: set[tuple[str, str]] = set()
    lines: dict[tuple[str, str], list[int]] = {}
    duplicates = 0
    for path, webhook_id, payment_id, kind in records:
        if (path, webhook_id) in seen:
            duplicates += 1
            continue
        seen.add((path, webhook_id))
        lines.setdefault((path, payment_id), []).append(STATUSES.index(kind.split(".", 1)[1]))
    out_of_order = sum(1 for seq in lines.values() if seq != sorted(seq))
    return len(seen), duplicates, out_of_order


async def queue_quiet(redis: Any, queue: str, subscriber_ids: Sequence[str]) -> bool:
    """No job queued or running, nothing in flight or parked for any subscriber."""
    from service.store.layout import ARQ_IN_PROGRESS_PREFIX, inflight_key, waiting_key

    if await redis.zcard(queue):
        return False
    async for _ in redis.scan_iter(match=ARQ_IN_PROGRESS_PREFIX + "*", count=1000):
        return False
    for sub in subscriber_ids:
        if await redis.zcard(inflight_key(sub)) or await redis.zcard(waiting_key(sub)):
            return False
    return True


async def measure_lifecycle(
    workdir: Path, payments: int, subscribers: int, report: Report = print, timeout_s: float = 300
) -> Lifecycle:
    """Queued bytes per event (no worker), then bytes per payment at rest (a worker started
    once everything is queued), on one stack with ``subscribers`` subscribers."""
    from kartahook import stack as builder
    from service.settings import Settings
    from service.store.client import redis_client
    from service.store.server import free_port

    queue = Settings().queue_name
    port = free_port()
    receiver_url = f"http://127.0.0.1:{port}"
    ids = [f"mem{i}" for i in range(1, subscribers + 1)]
    stack = builder.Stack(
        workdir / f"lifecycle-{subscribers}sub",
        subscribers=[builder.Subscriber(sub, f"{receiver_url}/{sub}") for sub in ids],
        extra_children=[receiver_spec(port)],
        token=TOKEN,
        base_env=child_env({}),
        sandbox_args=("--step-delay", "0.01"),
        workers=0,
    )
    result = Lifecycle(subscribers, payments)
    async with stack, httpx.AsyncClient(timeout=30) as http:
        redis = redis_client(stack.redis_url)
        try:
            await asyncio.sleep(0.5)
            result.baseline = await memory_info(redis)
            report(f"  {payments} payments through the sandbox, no worker ...")
            await completed_payments(stack.sandbox_url, payments)
            expected = payments * len(STATUSES)
            last = [-1, time.monotonic()]

            async def all_queued() -> bool:
                now = await redis.zcard(queue)
                if now != last[0]:
                    last[:] = [now, time.monotonic()]
                return bool(now >= expected and time.monotonic() - last[1] > 1.0)

            await wait_until(all_queued, timeout_s, "webhooks queued", stack)
            result.queued = await census(redis, queue)
            # One job per stored event (the event hashes hold one field per event: a key per
            # payment, not per event).
            result.events = int(await redis.zcard(queue))
            result.queued_reloaded = await reloaded_bytes(redis, workdir)
            report(f"  {result.events} events queued: {result.queued_per_event:.0f} B/event")

            report("  worker started; waiting for every delivery ...")
            started = time.monotonic()
            await stack.add_worker()
            # ``payment.init`` reveals no transition: four deliveries per payment and subscriber.
            wanted = payments * len(STATUSES) * subscribers

            async def delivered() -> bool:
                count = int((await http.get(receiver_url + "/_count")).content)
                return count >= wanted

            await wait_until(delivered, timeout_s, "deliveries", stack)
            with contextlib.suppress(TimeoutError):
                await wait_until(
                    lambda: queue_quiet(redis, queue, ids), 90, "queue quiet", stack, 0.5
                )
            result.rest_wait_s = time.monotonic() - started
            result.leftover_jobs = int(await redis.zcard(queue))
            records = await receiver_records(http, receiver_url)
            result.deliveries, result.duplicates, result.out_of_order = order_problems(records)
            await asyncio.sleep(0.5)
            result.rest = await census(redis, queue)
            result.rest_reloaded = await reloaded_bytes(redis, workdir)
            report(f"  at rest: {result.rest_per_payment:.0f} B/payment")
        finally:
            await redis.aclose()
    return result


# --- 3. jobs per breaker cycle during an outage ---------------------------------------------------


@dataclass
class Outage:
    parked: int
    cooldown_s: float
    cycles: list[tuple[int, int]] = field(default_factory=list)  # (job runs, peak due jobs)
    parked_lines: int = 0
    jobs_queued: int = 0  # the most jobs of the down subscriber queued at once (any due time)
    refused: int = 0
    expected: int = 0
    deliveries: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    recovery_s: float = 0.0
    recovery_peak_due: int = 0  # the most jobs of the down subscriber due at once, recovering
    other_expected: int = 0
    other_during_outage: int = 0  # the other subscriber's deliveries before the recovery
    other_out_of_order: int = 0

    @property
    def jobs_per_cycle(self) -> float:
        return statistics.median(c[0] for c in self.cycles) if self.cycles else 0.0

    @property
    def peak_due(self) -> int:
        return max((c[1] for c in self.cycles), default=0)


def metric_sum(text: str, names: Sequence[str], subscriber: str | None = None) -> float:
    """The sum of every sample of the metrics ``names`` in a Prometheus exposition (only those
    labelled with ``subscriber``, when given)."""
    total = 0.0
    label = f'subscriber="{subscriber}"'
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names and (subscriber is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def subscriber_jobs(subscriber: str) -> tuple[str, str]:
    """The job-id prefixes of a subscriber's jobs: its deliveries' and its wake jobs'."""
    return (
        layout.DELIVER_JOB_ID.split("{", 1)[0] + subscriber + ":",
        layout.WAKE_JOB_ID.split("{", 1)[0] + subscriber + ":",
    )


async def due_jobs(redis: Any, queue: str, subscriber: str) -> tuple[int, int]:
    """(due, all) jobs of ``subscriber`` (deliveries and wake jobs) in the arq queue."""
    from service.clock import now_ms

    members = await redis.zrange(queue, 0, -1, withscores=True)
    now = now_ms()
    prefixes = subscriber_jobs(subscriber)
    scores = [score for member, score in members if bytes(member).decode().startswith(prefixes)]
    return sum(1 for s in scores if s <= now), len(scores)


# The worker's metrics that count the runs of a subscriber's jobs: an attempt, a park, a wake job.
JOB_RUN_METRICS = (
    "kartahook_deliveries_total",
    "kartahook_delivery_deferred_total",
    "kartahook_delivery_wakes_total",
)


async def measure_outage(
    workdir: Path,
    parked: int,
    cooldown_s: float = 10.0,
    cycles: int = 3,
    report: Report = print,
    timeout_s: float = 300,
) -> Outage:
    """``parked`` payments parked behind a down subscriber's open breaker, beside a healthy one:
    the down subscriber's job runs and due jobs per breaker cycle; the healthy one's deliveries
    meanwhile; then recovery (the most jobs due at once) and the order of every line."""
    from kartahook import stack as builder
    from kartahook.supervisor import http_ok
    from service.domain.signing import sign_headers
    from service.settings import Settings
    from service.store.client import redis_client
    from service.store.layout import breaker_key, waiting_key
    from service.store.server import free_port

    queue = Settings().queue_name
    port, metrics_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    sub, other = "down", "up"
    settings = {
        "KARTAHOOK_DELIVERY_BREAKER_COOLDOWN_S": str(cooldown_s),
        # Retries every 1-2 s for a day: every delivery stays pending during the measurement,
        # none is dead-lettered, and recovery does not wait for a long step of the schedule.
        "KARTAHOOK_DELIVERY_RETRY_SCHEDULE_S": "1,2",
        "KARTAHOOK_DELIVERY_RETRY_REPEAT_S": "2",
        "KARTAHOOK_DELIVERY_RETRY_HORIZON_S": str(DAY_S),
        "KARTAHOOK_WORKER_METRICS_PORT": str(metrics_port),
    }
    stack = builder.Stack(
        workdir / "outage",
        subscribers=[
            builder.Subscriber(sub, f"{receiver_url}/{sub}"),
            builder.Subscriber(other, f"{receiver_url}/{other}"),
        ],
        extra_children=[receiver_spec(port)],
        token=TOKEN,
        base_env=child_env(settings),
        sandbox_args=("--step-delay", "0.01"),
        sandbox_webhooks=False,
    )
    expected = parked * len(STATUSES)
    result = Outage(parked, cooldown_s, expected=expected, other_expected=expected)
    async with stack, httpx.AsyncClient(timeout=30) as http:
        redis: Any = redis_client(stack.redis_url)
        try:
            await wait_until(http_ok(metrics_url), 30, "worker metrics", stack)
            await http.post(receiver_url + "/_fail", content=f"/{sub}".encode())
            report(f"  {parked} payments, subscriber {sub!r} answering 500, {other!r} 204 ...")
            ids = await completed_payments(stack.sandbox_url, parked)
            limit = asyncio.Semaphore(32)

            async def inject(payment_id: str) -> None:
                # The sandbox's own webhook of the last change: the full payment body, signed
                # as the sandbox signs it.
                async with limit:
                    got = await http.get(
                        f"{stack.sandbox_url}/v1/payments/{payment_id}",
                        headers={"authorization": f"Bearer {TOKEN}"},
                    )
                    got.raise_for_status()
                    payment = got.json()
                    body = orjson.dumps(
                        {"type": "payment.completed", "timestamp": "2026-01-01T00:00:00.000Z",
                         "data": payment}
                    )  # fmt: skip
                    headers = sign_headers(stack.source_secret, f"evt_mem_{payment_id}", body)
                    headers["content-type"] = "application/json"
                    answer = await http.post(stack.webhook_url, content=body, headers=headers)
                    if answer.status_code != 202:
                        raise RuntimeError(f"webhook answered {answer.status_code}")

            await asyncio.gather(*(inject(pid) for pid in ids))

            async def all_parked() -> bool:
                return int(await redis.zcard(waiting_key(sub))) >= parked

            await wait_until(all_parked, timeout_s, "payments parked", stack, 0.2)
            result.parked_lines = int(await redis.zcard(waiting_key(sub)))
            report(f"  {result.parked_lines} lines parked; sampling {cycles} breaker cycles ...")

            async def runs() -> float:
                text = (await http.get(metrics_url)).text
                return metric_sum(text, JOB_RUN_METRICS, sub)

            # One cycle = the time one ``open_until`` of the breaker holds; the first (partial)
            # one is skipped.
            opened = await redis.hget(breaker_key(sub), "open_until")
            seen = 0
            cycle_start_runs = await runs()
            peak = 0
            deadline = time.monotonic() + (cycles + 2) * (cooldown_s + 2) + 30
            while len(result.cycles) < cycles and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                due, total = await due_jobs(redis, queue, sub)
                peak = max(peak, due)
                result.jobs_queued = max(result.jobs_queued, total)
                now_open = await redis.hget(breaker_key(sub), "open_until")
                if now_open != opened:
                    opened = now_open
                    count = await runs()
                    if seen:
                        result.cycles.append((int(count - cycle_start_runs), peak))
                    seen += 1
                    cycle_start_runs, peak = count, 0
            if len(result.cycles) < cycles:
                raise TimeoutError(f"only {len(result.cycles)} breaker cycles observed")
            report(f"  {result.jobs_per_cycle:.0f} job runs per cycle; recovering ...")

            records = await receiver_records(http, receiver_url)
            result.other_during_outage = sum(1 for r in records if r[0] == f"/{other}")
            result.refused = int((await http.get(receiver_url + "/_refused")).content)
            started = time.monotonic()
            await http.post(receiver_url + "/_fail", content=b"off")
            wanted = result.expected + result.other_expected

            async def recovered() -> bool:
                due, _ = await due_jobs(redis, queue, sub)
                result.recovery_peak_due = max(result.recovery_peak_due, due)
                return int((await http.get(receiver_url + "/_count")).content) >= wanted

            await wait_until(recovered, timeout_s, "recovery", stack, 0.05)
            result.recovery_s = time.monotonic() - started
            records = await receiver_records(http, receiver_url)
            mine = [r for r in records if r[0] == f"/{sub}"]
            result.deliveries, result.duplicates, result.out_of_order = order_problems(mine)
            theirs = [r for r in records if r[0] == f"/{other}"]
            result.other_out_of_order = order_problems(theirs)[2]
        finally:
            await redis.aclose()
    return result


# --- 4. the projection ----------------------------------------------------------------------------


def lifetimes_s() -> dict[str, float | None]:
    """How long a key of each pattern lives at rest (s), from the settings and the code's
    defaults; None: no TTL (it stays until deleted)."""
    from service.settings import Settings
    from service.store.payments import PaymentStateStore

    settings = Settings()
    params = inspect.signature(PaymentStateStore.__init__).parameters
    return {
        layout.EVENT: max(settings.dedupe_ttl_s, settings.raw_ttl_s),
        # At rest every payment is final: its state shrank and lives the final state's TTL.
        layout.PAYMENT_STATE: params["final_state_ttl_s"].default,
        layout.PAYMENT_DIRTY: params["dirty_ttl_s"].default,
    }


@dataclass
class Projection:
    rows: list[tuple[str, float, float | None, float]]  # pattern, B/payment, TTL days, GB
    total_gb: float
    unbounded_gb_per_day: float


def project(life: Lifecycle, per_day: int = PAYMENTS_PER_DAY) -> Projection:
    """Steady state at ``per_day`` payments a day: sum over key kinds of bytes per payment at
    rest x payments a day x the days a key lives (:func:`lifetimes_s`, else the longest TTL seen
    on the kind's keys); keys without TTL, when most payments leave one, reported per day."""
    assert life.rest is not None and life.queued is not None
    ttl = lifetimes_s()
    rows: list[tuple[str, float, float | None, float]] = []
    unbounded = 0.0
    for row in life.rest.rows.values():
        if not row.keys:
            continue
        per_payment = row.total_bytes / life.payments
        # The configured lifetime; for a kind not listed there, the longest TTL seen on its keys.
        seconds = ttl.get(row.pattern) or (row.max_ttl_s if row.max_ttl_s > 0 else None)
        if seconds is None:
            if row.no_ttl >= life.payments // 2:  # grows with payments, never expires
                unbounded += per_payment * per_day / 1e9
                rows.append((row.pattern, per_payment, None, 0.0))
            continue
        days = seconds / DAY_S
        rows.append((row.pattern, per_payment, days, per_payment * per_day * days / 1e9))
    rows.sort(key=lambda r: -r[3])
    return Projection(rows, sum(r[3] for r in rows), unbounded)


# --- report ---------------------------------------------------------------------------------------


def fmt_b(value: float) -> str:
    return f"{value:,.0f} B"


def met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def census_table(title: str, snapshot: Census, per: int, unit: str) -> list[str]:
    rows = [
        f"{title}",
        "",
        f"| pattern | type | keys | avg MEMORY USAGE | bytes per {unit} | keys without TTL |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(snapshot.rows.values(), key=lambda r: -r.total_bytes):
        if row.keys:
            rows.append(
                f"| `{row.pattern}` | {row.type} | {row.keys:,} | {fmt_b(row.avg_bytes)} "
                f"| {fmt_b(row.total_bytes / max(per, 1))} | {row.no_ttl:,} |"
            )
    return rows


def render(lives: Sequence[Lifecycle], outage: Outage | None, when: str | None = None) -> list[str]:
    """The markdown of the whole measurement."""
    from service.settings import Settings
    from service.store.payments import TRANSITIONS_LOG_MAXLEN

    when = when or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    one = next((life for life in lives if life.subscribers == 1), lives[0] if lives else None)
    three = next((life for life in lives if life.subscribers == 3), None)
    out = [
        f"Generated by `python -m bench.memory` on {when}; method: `docs/benchmarks.md` "
        '("Memory") and the docstring of `bench/memory.py`. *Live*: Redis `used_memory` '
        "deltas from the stack's empty state, without the clients' buffers, the AOF buffer and "
        "the scripts cache (fixed costs, not per payment; the plain deltas are listed below). "
        "*Reloaded*: the same dataset saved and loaded into a fresh redis-server (its key "
        "tables sized for the keys there are, not for the run's peak). The at-rest goal is "
        "judged on the reloaded bytes without the capped streams and lists (constant).",
        "",
        "| measure | measured | issue 14 goal | |",
        "|---|---|---|---|",
    ]
    if one is not None:
        out.append(
            f"| Redis bytes per queued event ({one.events:,} events), live "
            f"(reloaded) | {fmt_b(one.queued_per_event)} "
            f"({fmt_b(one.queued_reloaded_per_event)}) | <= {GOAL_QUEUED_B:,} B "
            f"| {met(one.queued_per_event <= GOAL_QUEUED_B)} |"
        )
    for life in lives:
        goal = f"<= {GOAL_REST_3SUB_B:,} B" if life.subscribers == 3 else "-"
        value = life.rest_goal_per_payment
        verdict = met(value <= GOAL_REST_3SUB_B) if life.subscribers == 3 else ""
        out.append(
            f"| bytes per payment at rest, {life.subscribers} subscriber(s) "
            f"({life.payments:,} payments): reloaded without capped (reloaded; live) "
            f"| {fmt_b(value)} ({fmt_b(life.rest_reloaded_per_payment)}; "
            f"{fmt_b(life.rest_per_payment)}) | {goal} | {verdict} |"
        )
    if outage is not None:
        out.append(
            f"| jobs run per breaker cycle for the down subscriber, {outage.parked_lines:,} "
            f"parked payments | {outage.jobs_per_cycle:,.0f} (peak due at once "
            f"{outage.peak_due:,}) | <= {GOAL_JOBS_PER_CYCLE} with >= {GOAL_PARKED:,} parked "
            f"| {met(outage.jobs_per_cycle <= GOAL_JOBS_PER_CYCLE)} |"
        )
        in_order = outage.deliveries == outage.expected and not outage.out_of_order
        out.append(
            f"| after recovery, every transition delivered in order "
            f"| {outage.deliveries:,}/{outage.expected:,}, {outage.out_of_order} lines out of "
            f"order | all, in order | {met(in_order)} |"
        )
    if three is not None and three.rest is not None:
        bad = [p for p in three.rest.no_ttl_patterns() if p not in NO_TTL_ALLOWED]
        out.append(
            "| patterns with keys without TTL at rest (beyond queue, capped, operator items) "
            f"| {', '.join(f'`{p}`' for p in bad) or 'none'} | none | {met(not bad)} |"
        )
    if one is not None and one.rest is not None:
        proj = project(one)
        out.append(
            f"| 1 M payments/day, steady state, 1 subscriber | {proj.total_gb:,.1f} GB "
            f"+ {proj.unbounded_gb_per_day:,.2f} GB/day without TTL | - | |"
        )
    if three is not None and three.rest is not None:
        proj3 = project(three)
        out.append(
            f"| 1 M payments/day, steady state, 3 subscribers | {proj3.total_gb:,.1f} GB "
            f"+ {proj3.unbounded_gb_per_day:,.2f} GB/day without TTL | - | |"
        )
        if one is not None and one.rest is not None:
            extra = (three.rest_goal_per_payment - one.rest_goal_per_payment) / 2
            extra_gb = (proj3.total_gb - project(one).total_gb) / 2
            out += [
                f"| bytes per payment at rest per extra subscriber (from 1 and 3) "
                f"| {fmt_b(extra)} | - | |",
                f"| 1 M payments/day, steady state, 5 subscribers (extrapolated linearly from "
                f"1 and 3) | {proj3.total_gb + 2 * extra_gb:,.1f} GB | - | |",
            ]
    out.append("")
    for life in lives:
        assert life.queued is not None and life.rest is not None
        keys_queued = sum(r.total_bytes for r in life.queued.rows.values()) / max(life.events, 1)
        keys_rest = sum(r.total_bytes for r in life.rest.rows.values()) / max(life.payments, 1)
        clients = life.rest.info["mem_clients_normal"] - life.baseline["mem_clients_normal"]
        capped = life.capped_per_payment
        out.append(
            f"- {life.subscribers} subscriber(s): plain `used_memory` delta "
            f"{fmt_b(life.raw_delta(life.queued, life.events))}/event queued and "
            f"{fmt_b(life.raw_delta(life.rest, life.payments))}/payment at rest (clients' "
            f"buffers at rest {clients / 1024:,.0f} KiB more than empty); sum of the keys' "
            f"`MEMORY USAGE`: {fmt_b(keys_queued)}/event queued, "
            f"{fmt_b(keys_rest)}/payment at rest, of which {fmt_b(capped)} in capped streams "
            "and lists (their size does not grow with payments beyond the cap)."
        )
        out.append(
            f"- {life.subscribers} subscriber(s): {life.payments:,} payments, {life.events:,} "
            f"webhooks from the sandbox (one per change of status, full payment body); "
            f"{life.deliveries:,} deliveries received, {life.duplicates} duplicates, "
            f"{life.out_of_order} lines out of order; rest reached {life.rest_wait_s:.1f} s after "
            f"the worker started; jobs left in the queue at rest: {life.leftover_jobs}."
        )
    if outage is not None:
        out.append(
            f"- outage: breaker cool-down {outage.cooldown_s:g} s; the down subscriber's job "
            f"runs (attempts, parks, wake jobs) per cycle {[c[0] for c in outage.cycles]}, its "
            f"peak due jobs per cycle {[c[1] for c in outage.cycles]}, at most "
            f"{outage.jobs_queued:,} of its jobs queued; {outage.refused:,} attempts answered "
            f"500; the healthy subscriber received {outage.other_during_outage:,}/"
            f"{outage.other_expected:,} transitions before the recovery began "
            f"({outage.other_out_of_order} lines out of order); after recovery "
            f"{outage.deliveries:,}/{outage.expected:,} transitions arrived in "
            f"{outage.recovery_s:.1f} s (at most {outage.recovery_peak_due:,} of its jobs due at "
            f"once), {outage.duplicates} duplicates, {outage.out_of_order} lines out of order."
        )
    out.append("")
    if one is not None and one.queued is not None:
        out += census_table(
            f"Queued, by key pattern ({one.events:,} events, no worker):",
            one.queued,
            one.events,
            "event",
        )
        out.append("")
    for life in lives:
        if life.rest is not None:
            out += census_table(
                f"At rest, {life.subscribers} subscriber(s), by key pattern "
                f"({life.payments:,} payments):",
                life.rest,
                life.payments,
                "payment",
            )
            out.append("")
    for life in lives:
        if life.rest is None:
            continue
        proj = project(life)
        out += [
            f"Projection, {life.subscribers} subscriber(s): M = R x sum over key kinds of "
            "(bytes per payment at rest x TTL in days), R = 1,000,000 payments/day "
            "(TTLs from `service.settings.Settings` and `PaymentStateStore`'s defaults; "
            "another kind: the longest TTL seen on its keys):",
            "",
            "| pattern | bytes per payment | TTL (days) | GB at steady state |",
            "|---|---|---|---|",
        ]
        for pattern, per_payment, days, gb in proj.rows:
            ttl = f"{days:g}" if days is not None else "none: +GB/day"
            gb_text = (
                f"{gb:,.1f}"
                if days is not None
                else f"+{per_payment * PAYMENTS_PER_DAY / 1e9:,.2f}/day"
            )
            out.append(f"| `{pattern}` | {fmt_b(per_payment)} | {ttl} | {gb_text} |")
        out += [f"| **total** | | | **{proj.total_gb:,.1f}** |", ""]
        stream = life.rest.row(layout.TRANSITIONS)
        per_entry = stream.total_bytes / max(life.payments * len(STATUSES), 1)
        out += [
            f"Not in the total, constant whatever the rate: `{layout.TRANSITIONS}` at its cap of "
            f"{TRANSITIONS_LOG_MAXLEN:,} entries ~ {per_entry * TRANSITIONS_LOG_MAXLEN / 1e6:,.0f} "
            f"MB ({fmt_b(per_entry)}/entry here); `{layout.ATTEMPT_LOG}` "
            f"{Settings().delivery_attempt_log_size} entries per subscriber; the queue is empty "
            "at rest.",
            "",
        ]
    return out


START = "<!-- bench.memory:start -->"
END = "<!-- bench.memory:end -->"


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between this benchmark's markers replaced by ``body`` (appended,
    with the markers, when absent)."""
    block = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        return head + block + tail
    return text.rstrip() + "\n\n" + block + "\n"


def write_reports(lines: Sequence[str]) -> None:
    body = "\n".join(lines)
    results = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else ""
    RESULTS_PATH.write_text(
        replace_section(results, "# Redis memory benchmark results (issue 14)\n\n" + body)
    )
    docs = DOCS_PATH.read_text()
    DOCS_PATH.write_text(replace_section(docs, "### Current results\n\n" + body))


async def run_all(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kartahook-memory-bench-"))
    try:
        lives = []
        for subscribers in [] if args.outage_only else args.subscribers:
            print(f"queued and at rest, {subscribers} subscriber(s):", flush=True)
            lives.append(await measure_lifecycle(workdir, args.payments, subscribers))
        outage = None
        if args.parked:
            print(f"outage, {args.parked} parked payments:", flush=True)
            outage = await measure_outage(workdir, args.parked, args.cooldown)
        lines = render(lives, outage)
        print("\n" + "\n".join(lines), flush=True)
        if not args.no_write and not args.outage_only:
            write_reports(lines)
    except BaseException:
        print(f"(logs kept in {workdir})", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--payments", type=int, default=500, help="payments per at-rest run")
    parser.add_argument("--parked", type=int, default=2000, help="payments parked (0: skip)")
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--cooldown",
        type=float,
        default=10.0,
        help="breaker cool-down (s): long enough for the worker to run every parked job once",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--outage-only",
        action="store_true",
        help="measure only the outage (jobs per breaker cycle); printed, not written",
    )
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        serve_receiver(args.receiver)
        return 0
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
