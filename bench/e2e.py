"""End-to-end benchmark: the whole pipeline against arq's own no-op ceiling, in one run.

``python -m bench.e2e`` (also run by ``make bench``) measures, on this machine:

1. **Ceiling**: arq's no-op jobs per second. N no-op jobs are written to a fresh Redis (AOF on,
   ``appendfsync everysec``, like the pipeline's), then one worker process built by
   ``workers.main.build_worker`` (JSON serializer, ``max_jobs``, ``poll_delay``, ``keep_result=0``,
   the same settings as ``kartahook worker``; only the functions and startup are swapped) runs
   them in burst mode. Timed from its ``on_startup`` to the end of the burst.
2. **Pipeline**, with 1 and with 3 subscribers: real processes (Redis, the sandbox as the KartaPay
   API, ``kartahook serve``, one ``kartahook worker``, and one fast receiver process serving every
   subscriber's URL). Payments are first created and driven to ``completed`` in the sandbox (it
   sends no webhooks); then the benchmark posts one signed ``payment.completed`` webhook per
   payment straight to ``/v1/webhooks/kartapay``. Each webhook costs one fetch and reveals four
   transitions (submitted, approved, captured, completed), so 4 x subscribers deliveries.
   - *throughput*: all webhooks (``--payments``, 2,000) as fast as they are accepted (32 in
     flight); delivered events/s = unique deliveries / (last delivery's arrival - first webhook
     sent).
   - *latency*: webhooks paced at half the measured maximum webhook rate for ``--latency-s``;
     received->delivered = a delivery's arrival at the receiver - the time its webhook was sent
     (one clock: everything runs on this machine). p50 and p99 over every delivery.

It prints a table and writes ``bench/results.md`` with the machine's description.
``--rounds N`` (3 by default) then measures N - 1 more (ceiling, 1-subscriber throughput)
pairs, each in fresh processes, one after the other, and judges the goal by the median of the N
paired ratios: on a shared machine whose speed swings within minutes, one pair can land
anywhere in a wide range (docs/benchmarks.md, "End-to-end", 2026-12-01 night).
``--profile DIR`` also records py-spy profiles of the worker and the service during an extra
throughput run (py-spy, a dev dependency in the lock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

NOOP = "bench_noop"
# A delivery as the receiver saw it: arrival time, path (subscriber), webhook-id, payment id, type.
Record = tuple[float, str, str, str, str]
STATUSES_PER_PAYMENT = 4  # submitted, approved, captured, completed
TOKEN = "bench-sandbox-token"
RESULTS_PATH = Path(__file__).with_name("results.md")
GOAL_RATIO = 0.5
GOAL_P99_MS = 100.0
OTHER_SECTIONS = "<!-- bench."


# --- the receiver: one process, one path per subscriber ----------------------------------------


class Receiver:
    """A fast subscriber endpoint (raw ASGI): records each delivery's arrival, answers 204."""

    def __init__(self) -> None:
        self.records: list[Record] = []

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
        if scope["method"] == "POST":
            arrived = time.time()
            headers = dict(scope["headers"])
            body = orjson.loads(b"".join(chunks))
            self.records.append(
                (
                    arrived,
                    path,
                    headers.get(b"webhook-id", b"").decode(),
                    body["data"]["id"],
                    body["type"],
                )
            )
            await self._answer(send, 204, b"")
        elif path == "/count":
            await self._answer(send, 200, str(len(self.records)).encode())
        elif path == "/records":
            await self._answer(send, 200, orjson.dumps(self.records))
        elif path == "/reset":
            self.records = []
            await self._answer(send, 200, b"ok")
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

    serve("bench.e2e:receiver_app", uvicorn_options("127.0.0.1", port, 1, 5.0))


# --- 1. the ceiling: arq no-op jobs ---------------------------------------------------------------


async def noop(ctx: dict[str, Any]) -> None:
    """The no-op job."""


def run_noop_worker(redis_url: str) -> None:
    """Child process: drain the queue of no-op jobs with a worker from ``build_worker``."""
    import uvloop
    from arq.worker import func

    from service.settings import Settings
    from workers.main import build_worker

    marks: dict[str, float] = {}

    async def on_startup(ctx: dict[str, Any]) -> None:
        marks["start"] = time.perf_counter()

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = build_worker(
        Settings(),
        redis_url=redis_url,
        burst=True,
        handle_signals=False,
        functions=[func(noop, name=NOOP, keep_result=0)],
        on_startup=on_startup,
        on_shutdown=None,
    )
    worker.run()
    elapsed = time.perf_counter() - marks["start"]
    print(json.dumps({"jobs": worker.jobs_complete, "elapsed_s": elapsed}), flush=True)
    loop.close()


async def enqueue_noops(redis_url: str, count: int) -> None:
    """Write ``count`` no-op jobs in arq's own format (what ``enqueue_job`` writes)."""
    from service.clock import now_ms
    from service.settings import Settings
    from service.store.client import redis_client
    from service.store.jobs import arq_job_bytes
    from service.store.layout import arq_job_key

    queue = Settings().queue_name
    client = redis_client(redis_url)
    try:
        now = now_ms()
        for start in range(0, count, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(count, start + 1000)):
                job_id = f"noop{i:08d}"
                pipe.psetex(arq_job_key(job_id), 86_400_000, arq_job_bytes(NOOP, [], now))
                pipe.zadd(queue, {job_id: now})
            await pipe.execute()
    finally:
        await client.aclose()


def arq_ceiling(workdir: Path, count: int) -> dict[str, float]:
    from service.store.server import RedisServer

    with RedisServer(workdir / "redis-noop", appendonly=True) as redis:
        asyncio.run(enqueue_noops(redis.url, count))
        out = subprocess.run(
            [sys.executable, "-m", "bench.e2e", "--noop-worker", redis.url],
            env=child_env({"KARTAHOOK_REDIS_URL": redis.url}),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "jobs": result["jobs"],
        "elapsed_s": result["elapsed_s"],
        "jobs_per_s": result["jobs"] / result["elapsed_s"],
    }


# --- 2. the pipeline ------------------------------------------------------------------------------


# ``--set NAME=VALUE`` settings, given to every process of both the ceiling and the pipeline.
OVERRIDES: dict[str, str] = {}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a child: no inherited ``KARTAHOOK_*``, only ``--set`` and ``extra``."""
    from kartahook.stack import isolated_env

    env = isolated_env(OVERRIDES)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Stack:
    """The running pipeline: URLs, the source secret, and the supervisor of its processes."""

    service_url: str
    sandbox_url: str
    receiver_url: str
    subscribers: int
    source_secret: str
    supervisor: Any
    pids: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def pipeline_stack(
    workdir: Path, subscribers: int, concurrency: int | None, profile_dir: Path | None = None
) -> AsyncIterator[Stack]:
    """The whole stack, built by :class:`kartahook.stack.Stack` (as ``kartahook run`` and the
    end-to-end tests build it), with the receiver serving every subscriber's URL."""
    from kartahook import stack as builder
    from kartahook.supervisor import ChildSpec, http_ok
    from service.store.server import free_port

    name = f"{subscribers}sub" + ("-profiled" if profile_dir else "")
    base = workdir / name
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"

    def profiled(role: str, argv: list[str]) -> list[str]:
        if profile_dir is None:
            return argv
        out = profile_dir / f"{role}-{subscribers}sub"
        return [py_spy(), "record", "--format", "raw", "--rate", "250", "-o", f"{out}.txt",
                "--", *argv]  # fmt: skip

    receiver = ChildSpec(
        "receiver",
        [sys.executable, "-m", "bench.e2e", "--receiver", str(receiver_port)],
        child_env({}),
        http_ok(receiver_url + "/healthz"),
    )
    stack = builder.Stack(
        base,
        subscribers=[
            builder.Subscriber(f"bench{i}", f"{receiver_url}/s{i}", concurrency=concurrency)
            for i in range(1, subscribers + 1)
        ],
        extra_children=[receiver],
        token=TOKEN,
        base_env=child_env({}),
        sandbox_args=("--step-delay", "0.01"),
        sandbox_webhooks=False,
        wrap_argv=profiled,
        # The same fsync policy as the arq ceiling's Redis, so the ratio compares like with like.
        redis_appendfsync="everysec",
    )
    async with stack:
        try:
            yield Stack(
                stack.service_url,
                stack.sandbox_url,
                receiver_url,
                subscribers,
                stack.source_secret,
                stack.supervisor,
                stack.pids(),
            )
        finally:
            if profile_dir is not None:
                await stop_profiled(stack.supervisor)


def py_spy() -> str:
    """py-spy beside this Python (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


async def stop_profiled(supervisor: Any) -> None:
    """SIGINT to py-spy and its child (one process group): py-spy then writes its profile."""
    for child in supervisor.children:
        if child.name in ("worker", "service") and child.exited() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGINT)
    for child in supervisor.children:
        if child.name in ("worker", "service"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.process.wait, 30)


async def completed_payments(sandbox_url: str, count: int) -> list[str]:
    """Create and submit ``count`` payments, then wait until every one is ``completed``."""
    from kartahook.demo import demo_claim
    from service.kartapay import GATEWAY_CODES, KartaPayClient

    limit = asyncio.Semaphore(32)
    async with KartaPayClient(sandbox_url, TOKEN, timeout=30.0) as kartapay:

        async def create(n: int) -> str:
            async with limit:
                record = await kartapay.create(demo_claim(n))
                await kartapay.submit(record.id, GATEWAY_CODES[n % len(GATEWAY_CODES)])
                return record.id

        async def wait_completed(payment_id: str) -> None:
            async with limit:
                for _ in range(600):  # the sandbox steps every 0.01 s: a few rounds at most
                    if (await kartapay.get(payment_id)).payment.status == "completed":
                        return
                    await asyncio.sleep(0.05)
                raise TimeoutError(f"payment {payment_id} did not complete")

        ids = list(await asyncio.gather(*(create(n) for n in range(count))))
        await asyncio.gather(*(wait_completed(pid) for pid in ids))
    return ids


class Injector:
    """Posts signed ``payment.completed`` webhooks to the service, noting when each was sent."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.url = stack.service_url + "/v1/webhooks/kartapay"
        self.secret = stack.source_secret
        self.http = http
        self.sent_at: dict[str, float] = {}
        self.rejected = 0

    async def one(self, payment_id: str) -> None:
        from service.domain.signing import sign_headers

        body = orjson.dumps(
            {
                "type": "payment.completed",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "data": {"id": payment_id, "status": "completed"},
            }
        )
        headers = sign_headers(self.secret, f"evt_bench_{payment_id}", body)
        headers["content-type"] = "application/json"
        self.sent_at[payment_id] = time.time()
        async with self.http.post(self.url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 202:
                self.rejected += 1

    async def flood(self, payment_ids: Sequence[str], in_flight: int = 32) -> None:
        queue = list(reversed(payment_ids))

        async def lane() -> None:
            while queue:
                await self.one(queue.pop())

        await asyncio.gather(*(lane() for _ in range(in_flight)))

    async def paced(self, payment_ids: Sequence[str], per_s: float) -> None:
        start = time.monotonic()
        tasks = []
        for i, payment_id in enumerate(payment_ids):
            delay = start + i / per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.one(payment_id)))
        await asyncio.gather(*tasks)


async def receiver_get(http: aiohttp.ClientSession, stack: Stack, path: str) -> bytes:
    async with http.get(stack.receiver_url + path) as response:
        return await response.read()


async def wait_deliveries(
    http: aiohttp.ClientSession, stack: Stack, expected: int, timeout_s: float
) -> list[Record]:
    deadline = time.monotonic() + timeout_s
    while int(await receiver_get(http, stack, "/count")) < expected:
        exited = stack.supervisor.first_exited()
        if exited is not None:
            raise RuntimeError(f"{exited.name} exited:\n{exited.log_tail()}")
        if time.monotonic() > deadline:
            got = int(await receiver_get(http, stack, "/count"))
            raise TimeoutError(f"only {got} of {expected} deliveries arrived")
        await asyncio.sleep(0.05)
    records: list[Record] = [
        tuple(r) for r in orjson.loads(await receiver_get(http, stack, "/records"))
    ]
    await receiver_get(http, stack, "/reset")
    return records


def unique(records: list[Record]) -> list[Record]:
    """First arrival of each (subscriber path, webhook-id)."""
    seen: set[tuple[str, str]] = set()
    first = []
    for record in sorted(records):
        key = (record[1], record[2])
        if key not in seen:
            seen.add(key)
            first.append(record)
    return first


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) of each process so far, and of this one as ``bench``."""
    from bench.cpu import process_cpu_seconds

    used: dict[str, float] = {}
    for name, pid in pids.items():
        seconds = process_cpu_seconds(pid)
        if seconds is not None:
            used[name] = seconds
    times = os.times()
    used["bench"] = times.user + times.system
    return used


def event_order(event_type: str) -> int:
    from service.domain.lifecycle import SEQ

    return SEQ.get(event_type.removeprefix("payment."), 99)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class PipelineResult:
    subscribers: int
    payments: int
    deliveries: int
    elapsed_s: float
    delivered_per_s: float
    webhooks_per_s: float
    latency_rate: float = 0.0  # webhooks/s during the latency run
    latency_deliveries: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    duplicates: int = 0
    rejected: int = 0
    by_type: dict[str, tuple[float, float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """Throughput run: CPU seconds used by each process (``bench`` is the load generator)."""
    """Latency run, per event type: (p50, p99) in ms."""


async def measure_pipeline(
    workdir: Path, subscribers: int, args: argparse.Namespace, profile_dir: Path | None = None
) -> PipelineResult:
    per_payment = STATUSES_PER_PAYMENT * subscribers
    async with pipeline_stack(workdir, subscribers, args.concurrency, profile_dir) as stack:
        warmup = await completed_payments(stack.sandbox_url, args.warmup)
        throughput_ids = await completed_payments(stack.sandbox_url, args.payments)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            injector = Injector(stack, http)
            await injector.flood(warmup)
            await wait_deliveries(http, stack, len(warmup) * per_payment, args.timeout)

            cpu_before = cpu_seconds(stack.pids)
            started = time.time()
            await injector.flood(throughput_ids)
            records = await wait_deliveries(
                http, stack, len(throughput_ids) * per_payment, args.timeout
            )
            cpu_used = {
                name: used - cpu_before[name] for name, used in cpu_seconds(stack.pids).items()
            }
            firsts = unique(records)
            elapsed = max(r[0] for r in firsts) - started
            result = PipelineResult(
                subscribers=subscribers,
                payments=len(throughput_ids),
                deliveries=len(firsts),
                elapsed_s=elapsed,
                delivered_per_s=len(firsts) / elapsed,
                webhooks_per_s=len(throughput_ids) / elapsed,
                duplicates=len(records) - len(firsts),
                cpu_s=cpu_used,
            )
            if profile_dir is not None:
                return result

            rate = result.webhooks_per_s / 2
            latency_ids = await completed_payments(
                stack.sandbox_url, max(20, int(rate * args.latency_s))
            )
            await injector.paced(latency_ids, rate)
            records = await wait_deliveries(
                http, stack, len(latency_ids) * per_payment, args.timeout
            )
            firsts = unique(records)
            latencies = [(r[0] - injector.sent_at[r[3]]) * 1000 for r in firsts]
            for event_type in sorted({r[4] for r in firsts}, key=event_order):
                of_type = [
                    (r[0] - injector.sent_at[r[3]]) * 1000 for r in firsts if r[4] == event_type
                ]
                result.by_type[event_type] = (percentile(of_type, 50), percentile(of_type, 99))
            result.latency_rate = rate
            result.latency_deliveries = len(latencies)
            result.p50_ms = percentile(latencies, 50)
            result.p99_ms = percentile(latencies, 99)
            result.max_ms = max(latencies)
            result.duplicates += len(records) - len(latencies)
            result.rejected = injector.rejected
            return result


# --- profile summary ---------------------------------------------------------------------------

# Stages of a py-spy sample, by the frames on its stack: the first rule that matches wins.
WORKER_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("startup (imports, on_startup)", ("_find_and_load", "on_startup", "build_parser")),
    ("processing: fetch GET /v1/payments (httpx)", ("EventProcessor._fetch",)),
    ("processing: compare-and-set Lua, creating deliveries", ("EventProcessor._record",)),
    ("delivery: HTTP POST to the subscriber", ("post_once",)),
    ("delivery: cap/order/breaker Lua, bookkeeping", ("fanout/handlers.py",)),
    ("processing: other (lock, job, log line)", ("process_event_job",)),
    ("arq: poll, start, finish jobs", ("arq/worker.py",)),
)
SERVICE_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("startup (imports)", ("_find_and_load", "build_parser")),
    ("ingest: batched Redis writes", ("ingest_batcher.py",)),
    ("ingest: verify, parse, answer", ("service/ingest.py", "service/webhook_front.py")),
    ("logging", ("structlog",)),
    ("HTTP: uvicorn, middleware", ("uvicorn/", "service/middleware.py", "starlette/")),
)


def _samples(path: Path) -> Iterator[tuple[str, int]]:
    """(stack, sample count) of each line of a py-spy ``--format raw`` profile."""
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if number.isdigit():
            yield stack, int(number)


def _shares(counts: dict[str, int]) -> list[tuple[str, float]]:
    total = max(sum(counts.values()), 1)
    return sorted(((name, c / total) for name, c in counts.items()), key=lambda x: -x[1])


def profile_summary(
    path: Path, stages: tuple[tuple[str, tuple[str, ...]], ...]
) -> list[tuple[str, float]]:
    """Share of the samples of a py-spy ``--format raw`` profile per stage, largest first.

    A sample whose leaf is the event loop's own ``run`` frame is time in uvloop (I/O, callbacks).
    """
    counts: dict[str, int] = {}
    for stack, number in _samples(path):
        if stack.rsplit(";", 1)[-1].startswith(("Worker.run ", "Runner.run ")):
            stage = "event loop (uvloop: I/O, callbacks)"
        else:
            stage = next(
                (name for name, needles in stages if any(n in stack for n in needles)), "other"
            )
        counts[stage] = counts.get(stage, 0) + number
    return _shares(counts)


def top_functions(path: Path, count: int = 12) -> list[tuple[str, float]]:
    """The functions with the most samples at the leaf (self time)."""
    counts: dict[str, int] = {}
    for stack, number in _samples(path):
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf] = counts.get(leaf, 0) + number
    return _shares(counts)[:count]


def print_profiles(profile_dir: Path) -> list[str]:
    lines = []
    for role, stages in (("worker", WORKER_STAGES), ("service", SERVICE_STAGES)):
        for path in sorted(profile_dir.glob(f"{role}-*.txt")):
            lines += [f"{path.name}: share of samples by stage"]
            lines += [f"  {share:6.1%}  {stage}" for stage, share in profile_summary(path, stages)]
            lines += [f"{path.name}: top functions (self)"]
            lines += [f"  {share:6.1%}  {name}" for name, share in top_functions(path)]
    return lines


# --- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def table(ceiling: dict[str, float], results: list[PipelineResult]) -> list[str]:
    rows = [
        "| measure | subscribers | delivered events/s | ratio to arq no-op | webhooks/s "
        "| latency-run rate (webhooks/s) | p50 received->delivered | p99 | max |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| arq no-op ceiling | - | {ceiling['jobs_per_s']:.0f} jobs/s | 1.00 "
        "| - | - | - | - | - |",
    ]
    for r in results:
        rows.append(
            f"| pipeline | {r.subscribers} | {r.delivered_per_s:.0f} "
            f"| {r.delivered_per_s / ceiling['jobs_per_s']:.2f} | {r.webhooks_per_s:.0f} "
            f"| {r.latency_rate:.0f} | {r.p50_ms:.1f} ms | {r.p99_ms:.1f} ms | {r.max_ms:.1f} ms |"
        )
    return rows


def paired_ratios(
    ceiling: dict[str, float], results: list[PipelineResult], rounds: list[tuple[float, float]]
) -> list[float]:
    """The 1-subscriber ratio of the first round, then of each extra round (``--rounds``):
    deliveries/s over the ceiling measured just before them."""
    one = next((r for r in results if r.subscribers == 1), None)
    if one is None:
        return []
    pairs = [(ceiling["jobs_per_s"], one.delivered_per_s), *rounds]
    return [delivered / jobs for jobs, delivered in pairs]


def verdict(
    ceiling: dict[str, float],
    results: list[PipelineResult],
    rounds: list[tuple[float, float]] | None = None,
) -> list[str]:
    one = next((r for r in results if r.subscribers == 1), None)
    if one is None:
        return []
    ratios = paired_ratios(ceiling, results, rounds or [])
    ratio = statistics.median(ratios)
    shown = (
        f"{ratio:.2f}"
        if len(ratios) == 1
        else f"median {ratio:.2f} of {len(ratios)} paired runs ("
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")"
    )
    return [
        f"- goal ratio >= {GOAL_RATIO} with 1 subscriber: {shown}, "
        f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}",
        f"- goal p99 received->delivered <= {GOAL_P99_MS:.0f} ms at half the maximum rate "
        f"(1 subscriber): {one.p99_ms:.1f} ms, {'met' if one.p99_ms <= GOAL_P99_MS else 'NOT met'}",
    ]


def write_results(
    ceiling: dict[str, float],
    results: list[PipelineResult],
    args: argparse.Namespace,
    rounds: list[tuple[float, float]] | None = None,
) -> str:
    box = machine()
    details = [
        f"- {r.subscribers} subscriber(s): throughput run {r.payments} webhooks -> "
        f"{r.deliveries} unique deliveries in {r.elapsed_s:.2f} s; latency run "
        f"{r.latency_deliveries} deliveries; duplicate deliveries {r.duplicates}; "
        f"webhooks not answered 202: {r.rejected}; latency run by event type, p50/p99 ms: "
        + ", ".join(f"{t} {p50:.0f}/{p99:.0f}" for t, (p50, p99) in r.by_type.items())
        + "; CPU seconds in the throughput run: "
        + ", ".join(
            f"{name} {cpu:.2f}" for name, cpu in sorted(r.cpu_s.items(), key=lambda x: -x[1])
        )
        + f" (wall {r.elapsed_s:.2f} s, {os.cpu_count()} CPUs)"
        for r in results
    ]
    text = "\n".join(
        [
            "# End-to-end benchmark results",
            "",
            f"Generated by `python -m bench.e2e` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. "
            "Method: see `docs/benchmarks.md` and the docstring of `bench/e2e.py`.",
            "",
            f"Machine: {box['nproc']} CPUs ({box['cpu']}), {box['memory']} RAM, "
            f"Python {box['python']}, Linux {box['kernel']}. Everything (Redis, sandbox, service, "
            "worker, receiver, load generator) shares these CPUs.",
            "",
            *table(ceiling, results),
            "",
            f"arq no-op ceiling: {ceiling['jobs']:.0f} jobs in {ceiling['elapsed_s']:.2f} s, one "
            "worker process, `build_worker` settings.",
            *details,
            f"- settings given to every process: {', '.join(args.set) or 'none (defaults)'}",
            f"- per-subscriber concurrency cap: {args.concurrency or 'the default'} "
            "(default: KARTAHOOK_DELIVERY_CONCURRENCY, 4)",
            "",
            *(
                [
                    "- extra paired rounds (ceiling jobs/s, 1-subscriber deliveries/s): "
                    + ", ".join(f"({jobs:.0f}, {delivered:.0f})" for jobs, delivered in rounds)
                ]
                if rounds
                else []
            ),
            "",
            "Goals (issue 6):",
            *verdict(ceiling, results, rounds),
            "",
        ]
    )
    # Other benchmarks' sections (``<!-- bench.<name>:start -->`` … ``:end -->``, e.g.
    # bench.memory's) follow this table in the file: kept as they are.
    previous = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else ""
    kept = previous[previous.index(OTHER_SECTIONS) :] if OTHER_SECTIONS in previous else ""
    RESULTS_PATH.write_text(text + ("\n" + kept if kept else ""))
    return text


async def extra_rounds(workdir: Path, args: argparse.Namespace) -> list[tuple[float, float]]:
    """``--rounds``: N - 1 more (ceiling jobs/s, 1-subscriber deliveries/s) pairs, each in
    fresh processes and directories (a short latency run: only the throughput counts here)."""
    pairs = []
    quick = argparse.Namespace(**{**vars(args), "latency_s": 0.1})
    for n in range(2, args.rounds + 1):
        base = workdir / f"round-{n}"
        base.mkdir()
        print(f"round {n} of {args.rounds}: ceiling, then 1 subscriber ...", flush=True)
        ceiling = await asyncio.to_thread(arq_ceiling, base, args.noop_jobs)
        result = await measure_pipeline(base, 1, quick)
        ratio = result.delivered_per_s / ceiling["jobs_per_s"]
        print(
            f"  {ceiling['jobs_per_s']:.0f} jobs/s, {result.delivered_per_s:.0f} delivered/s: "
            f"{ratio:.2f}",
            flush=True,
        )
        pairs.append((ceiling["jobs_per_s"], result.delivered_per_s))
    return pairs


async def run_all(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kartahook-e2e-bench-"))
    try:
        print(f"arq no-op ceiling: {args.noop_jobs} jobs ...", flush=True)
        ceiling = await asyncio.to_thread(arq_ceiling, workdir, args.noop_jobs)
        print(f"  {ceiling['jobs_per_s']:.0f} jobs/s", flush=True)
        results = []
        for subscribers in args.subscribers:
            print(f"pipeline, {subscribers} subscriber(s) ...", flush=True)
            result = await measure_pipeline(workdir, subscribers, args)
            print(
                f"  {result.delivered_per_s:.0f} delivered/s, p99 {result.p99_ms:.1f} ms",
                flush=True,
            )
            results.append(result)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for subscribers in args.subscribers[:1]:
                print(f"profiled throughput run, {subscribers} subscriber(s) ...", flush=True)
                await measure_pipeline(workdir, subscribers, args, args.profile.resolve())
            print("\n".join(print_profiles(args.profile)), flush=True)
        rounds = await extra_rounds(workdir, args) if 1 in args.subscribers else []
        text = write_results(ceiling, results, args, rounds)
        print()
        print(text)
    except BaseException:
        print(f"(logs kept in {workdir})", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--noop-jobs", type=int, default=20_000, help="jobs for the ceiling")
    parser.add_argument("--payments", type=int, default=2000, help="webhooks per throughput run")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up webhooks per stack")
    parser.add_argument("--latency-s", type=float, default=8.0, help="length of the latency run")
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="paired (ceiling, 1-subscriber) runs; the goal is judged on their median ratio",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="per-subscriber cap written in the subscribers file",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run, at most")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy profiles go here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KARTAHOOK_NAME=VALUE",
        help="a setting for every process (ceiling and pipeline alike); repeatable",
    )
    parser.add_argument("--summarize", type=Path, help="only summarize the profiles in this dir")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--noop-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        serve_receiver(args.receiver)
        return 0
    if args.summarize:
        print("\n".join(print_profiles(args.summarize)))
        return 0
    if args.noop_worker:
        run_noop_worker(args.noop_worker)
        return 0
    for setting in args.set:
        name, _, value = setting.partition("=")
        if not name.startswith("KARTAHOOK_") or not value:
            parser.error(f"--set {setting}: expected KARTAHOOK_NAME=VALUE")
        OVERRIDES[name] = value
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
