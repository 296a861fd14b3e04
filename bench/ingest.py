"""Ingestion throughput: the real ``/v1/webhooks/kartapay`` against a bare Starlette endpoint.

``python -m bench.ingest`` starts its own redis-server (AOF on, ``appendfsync everysec``) and two
uvicorn servers in separate processes with the same settings as ``kartahook serve`` (uvloop,
httptools, one worker process each):

- ``real``: ``service.api.app`` with the kartapay source: verify, dedupe, store, enqueue, log;
- ``bare``: a Starlette route that reads the body and answers 202.

wrk drives each with 64 connections and distinct, validly signed events (pre-signed, replayed by
``bench/ingest.lua``), after a short warm-up, in alternating rounds (so a change of load on a
shared machine hits both). It prints requests/s of every round, then for the median round of
each target requests/s and p50/p99 latency, and the ratio. Goal: ratio >= 0.50, real p99 <= 10 ms.

It also prints each server's CPU time per request (user + system, from ``/proc``; medians of the
rounds) and their ratio. Both servers are CPU-bound on one core, so on a machine shared with
other work that ratio is the steadier measure of the same thing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.cpu import process_cpu_seconds

LUA_SCRIPT = Path(__file__).with_name("ingest.lua")
PATH = "/v1/webhooks/kartapay"


def bare_app() -> Starlette:
    """The reference endpoint: read the body, answer 202."""

    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"accepted"}', 202, media_type="application/json")

    return Starlette(routes=[Route("/v1/webhooks/{source}", webhook, methods=["POST"])])


def serve_target(target: str, port: int) -> None:
    """Run one target server in this process (called in the child processes)."""
    from kartahook.commands.serve import APP_FACTORY, serve, uvicorn_options

    options = uvicorn_options("127.0.0.1", port, workers=1, grace_period_s=5)
    if target == "real":
        serve(APP_FACTORY, options)
    else:
        serve("bench.ingest:bare_app", options)


def write_requests(path: Path, secret: str, count: int, prefix: str) -> None:
    """``count`` distinct events signed now, one per line for ``ingest.lua``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(time.time()))
    with path.open("w") as out:
        for i in range(count):
            msg_id = f"msg_{prefix}_{i:08d}"
            body = (
                '{"type":"payment.captured","timestamp":"2026-01-01T00:00:00Z",'
                f'"data":{{"id":"pay_{prefix}_{i % 50000:05d}","status":"captured",'
                '"amount":"12500","currency":"MGA"}}'
            )
            mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
            signature = "v1," + base64.b64encode(mac).decode()
            out.write(f"{msg_id}\t{timestamp}\t{signature}\t{body}\n")


def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (local URL)
                response.read()
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: the server answers
                return
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def run_wrk(
    port: int, requests_file: Path, duration_s: float, connections: int, threads: int
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}",
        "--",
        str(requests_file),
        PATH,
        str(threads),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("JSON"))
    stats: dict[str, Any] = json.loads(line.removeprefix("JSON"))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def start_server(target: str, port: int, env: dict[str, str], log_path: Path) -> Any:
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", "--serve", target, "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    return process


def stop_server(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from service.domain.signing import generate_secret
    from service.store.server import RedisServer, free_port

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="kartahook-bench-"))
    secret = generate_secret()
    sources_file = workdir / "sources.yaml"
    sources_file.write_text('sources:\n  kartapay: {secrets: ["${BENCH_KARTAPAY_SECRET}"]}\n')
    results: dict[str, dict[str, Any]] = {}
    with RedisServer(workdir / "redis", appendonly=True) as redis:
        env = {
            **os.environ,
            "KARTAHOOK_REDIS_URL": redis.url,
            "KARTAHOOK_SOURCES_FILE": str(sources_file),
            "KARTAHOOK_LOG_FORMAT": "json",
            "BENCH_KARTAPAY_SECRET": secret,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path]),
        }
        ports = {target: free_port() for target in args.targets}
        processes = {
            target: start_server(target, port, env, workdir / f"{target}.log")
            for target, port in ports.items()
        }
        runs: dict[str, list[dict[str, Any]]] = {target: [] for target in args.targets}
        round_s = args.duration / args.rounds
        try:
            for target, port in ports.items():
                wait_ready(f"http://127.0.0.1:{port}/healthz")
                warm = workdir / f"{target}-warm.tsv"
                write_requests(warm, secret, int(args.warmup * args.events_per_s), target + "w")
                run_wrk(port, warm, args.warmup, args.connections, args.threads)
            # Alternate short rounds, so a change of load on the machine hits both targets.
            for round_no in range(args.rounds):
                for target, port in ports.items():
                    measured = workdir / f"{target}-{round_no}.tsv"
                    prefix = f"{target}{round_no}"
                    write_requests(measured, secret, int(round_s * args.events_per_s), prefix)
                    cpu_before = process_cpu_seconds(processes[target].pid)
                    stats = run_wrk(port, measured, round_s, args.connections, args.threads)
                    cpu_after = process_cpu_seconds(processes[target].pid)
                    if cpu_before is not None and cpu_after is not None and stats["requests"]:
                        stats["cpu_us"] = (cpu_after - cpu_before) / stats["requests"] * 1e6
                    runs[target].append(stats)
        finally:
            for process in processes.values():
                stop_server(process)
        for target, target_runs in runs.items():
            ordered = sorted(target_runs, key=lambda stats: stats["rps"])
            results[target] = {**ordered[len(ordered) // 2], "rounds": target_runs}
            cpu = sorted(run["cpu_us"] for run in target_runs if "cpu_us" in run)
            if cpu:
                results[target]["cpu_us_median"] = cpu[len(cpu) // 2]
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(results: dict[str, dict[str, Any]]) -> None:
    for target, stats in results.items():
        each = ", ".join(f"{run['rps']:.0f}" for run in stats["rounds"])
        print(f"{target:>5}: rounds {each} req/s; the median round:")
        print(
            f"{target:>5}: {stats['rps']:9.0f} req/s  p50 {stats['p50_us'] / 1000:6.2f} ms  "
            f"p99 {stats['p99_us'] / 1000:6.2f} ms  max {stats['max_us'] / 1000:6.1f} ms  "
            f"non-2xx {stats['non2xx']}  socket errors {stats['socket_errors']}  "
            f"replayed {stats['wrapped']}"
        )
        if "cpu_us_median" in stats:
            each_cpu = ", ".join(f"{run['cpu_us']:.0f}" for run in stats["rounds"])
            print(
                f"{target:>5}: CPU per request {stats['cpu_us_median']:.0f} us "
                f"(median; rounds {each_cpu} us)"
            )
    if "real" in results and "bare" in results:
        ratio = results["real"]["rps"] / results["bare"]["rps"]
        p99_ms = results["real"]["p99_us"] / 1000
        ratio_verdict = "met" if ratio >= 0.5 else "NOT met"
        p99_verdict = "met" if p99_ms <= 10 else "NOT met"
        print(
            f"ratio real/bare (median rounds): {ratio:.2f} (goal >= 0.50: {ratio_verdict}); "
            f"real p99 {p99_ms:.2f} ms (goal <= 10 ms: {p99_verdict})"
        )
        if "cpu_us_median" in results["real"] and "cpu_us_median" in results["bare"]:
            cpu_ratio = results["bare"]["cpu_us_median"] / results["real"]["cpu_us_median"]
            print(f"CPU per request, bare/real (median rounds): {cpu_ratio:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per target")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--events-per-s", type=int, default=30_000, help="pre-signed events per second of run"
    )
    parser.add_argument("--targets", nargs="+", default=["bare", "real"], choices=["bare", "real"])
    parser.add_argument("--serve", choices=["bare", "real"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_target(args.serve, args.port)
        return 0
    results = bench(args)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
