"""Ingestion throughput: the real ``/v1/webhooks/<source>`` against a bare Starlette endpoint.

``python -m bench.ingest`` starts its own redis-server (AOF on, ``appendfsync everysec``) and two
uvicorn servers in separate processes with the same settings as ``kartahook serve`` (uvloop,
httptools, one worker process each):

- ``real``: ``service.api.app`` with the kartapay source: verify, dedupe, store, enqueue, log;
- ``bare``: a Starlette route that reads the body and answers 202.

wrk drives each with 64 connections and distinct, validly signed events (pre-signed, replayed by
``bench/ingest.lua``), after a short warm-up, in alternating rounds (so a change of load on a
shared machine hits both). It prints requests/s of every round, then for the median round of
each target requests/s and p50/p99 latency, and the ratio. Goal: ratio >= 0.50, real p99 <= 10 ms.

Per source (issue 11): the same real server has all seven sources (the sources file of
``kartahook.stack``), and the targets ``stripe``, ``huri`` (HMAC), ``paypal`` (RSA, the
certificate fetched over https from the sandbox's certificate server, run here on a thread, and
cached: the warm-up fetches it) and ``mvola-km`` (HTTP Basic) replay distinct requests built and
signed by the sandbox's provider modules (``bench/ingest_sources.py``, ``ingest.lua``).
Each is reported as a ratio of the bare endpoint's median round, with its p99, in a table.
Goal: each >= 0.45 of bare, p99 <= 10 ms. PayPal's requests are fewer (``--paypal-events-per-s``,
or 1.5 x the warm-up's rate when more): RSA signing them is slow; a round that runs out replays
them (duplicates), shown as ``replayed``.

p99 is also measured paced, after the rounds: every target offered the same rate
(``--latency-rate``, ``auto``: half the slowest target's median round) by 16 connections that
wait a random time after each answer (``ingest.lua``'s ``delay()``); at saturation, with 64
connections in a closed loop, p99 measures the queue and the machine. The tables go into
``bench/results.md`` and ``docs/benchmarks.md`` between ``bench.ingest`` markers.

It also prints each server's CPU time per request (user + system, from ``/proc``; medians of the
rounds) and their ratio. Both servers are CPU-bound on one core, so on a machine shared with
other work that ratio is the steadier measure of the same thing.
And the CPU time per request of each server's main thread, the one running the event loop
(``/proc/<pid>/task/<pid>``): equal to the process's unless work runs on other threads (it shows
whether a change moved work off the loop, docs/decisions/paypal-verification-cost.md).
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

from bench.cpu import process_cpu_seconds, thread_cpu_seconds
from bench.ingest_sources import HEADER_SEPARATOR

LUA_SCRIPT = Path(__file__).with_name("ingest.lua")
PATH = "/v1/webhooks/kartapay"
SOURCE_TARGETS = ("stripe", "huri", "paypal", "mvola-km")
TARGETS = ("bare", "real", *SOURCE_TARGETS)
SOURCE_GOAL_RATIO = 0.45
P99_GOAL_MS = 10.0


def server_of(target: str) -> str:
    """The server a target is measured on: the bare endpoint, or the real service."""
    return "bare" if target == "bare" else "real"


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
    """``count`` distinct kartapay events signed now, one whole request per line for
    ``ingest.lua`` (the line format of :mod:`bench.ingest_sources`)."""
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
            headers = HEADER_SEPARATOR.join(
                (
                    "Content-Type: application/json",
                    f"webhook-id: {msg_id}",
                    f"webhook-timestamp: {timestamp}",
                    f"webhook-signature: {signature}",
                )
            )
            out.write(f"POST\t{PATH}\t{headers}\t{body}\n")


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
    port: int,
    requests_file: Path,
    duration_s: float,
    connections: int,
    threads: int,
    mean_delay_ms: float = 0.0,
) -> dict[str, Any]:
    """One wrk run replaying the whole requests of ``requests_file`` (``ingest.lua``); with
    ``mean_delay_ms``, each connection paces its requests (see ``ingest.lua``)."""
    script, script_args = LUA_SCRIPT, [str(requests_file), str(threads)]
    if mean_delay_ms > 0:
        script_args.append(f"{mean_delay_ms:.3f}")
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
        "--",
        *script_args,
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
    from bench.ingest_sources import PayPalCertServer, RequestMaker, makers
    from kartahook.stack import SOURCE_SECRET_ENV, ProviderCredentials, sources_yaml
    from service.domain.signing import generate_secret
    from service.store.server import RedisServer, free_port

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="kartahook-bench-"))
    secret = generate_secret()
    credentials = ProviderCredentials()
    certs = None
    if "paypal" in args.targets:
        certs = PayPalCertServer(workdir / "paypal-ca.pem")
        certs.start()
    sources_file = workdir / "sources.yaml"
    sources_file.write_text(sources_yaml(workdir / "paypal-ca.pem" if certs else None))
    request_makers: dict[str, RequestMaker] = makers(credentials, certs.service if certs else None)
    results: dict[str, dict[str, Any]] = {}
    try:
        with RedisServer(workdir / "redis", appendonly=True) as redis:
            env = {
                **os.environ,
                "KARTAHOOK_REDIS_URL": redis.url,
                "KARTAHOOK_SOURCES_FILE": str(sources_file),
                "KARTAHOOK_LOG_FORMAT": "json",
                SOURCE_SECRET_ENV: secret,
                **credentials.source_env(),
                "PYTHONPATH": os.pathsep.join(
                    [str(Path(__file__).resolve().parents[1]), *sys.path]
                ),
            }
            servers = sorted({server_of(target) for target in args.targets})
            ports = {server: free_port() for server in servers}
            processes = {
                server: start_server(server, port, env, workdir / f"{server}.log")
                for server, port in ports.items()
            }
            runs: dict[str, list[dict[str, Any]]] = {target: [] for target in args.targets}
            paced: dict[str, dict[str, Any]] = {}
            warm_rps: dict[str, float] = {}
            round_s = args.duration / args.rounds

            def write(
                target: str, path: Path, seconds: float, prefix: str, count: int | None = None
            ) -> None:
                """The target's requests for ``seconds`` at its rate of events (or ``count``)."""
                if target in request_makers:
                    rate = args.source_events_per_s
                    if target == "paypal":
                        # Enough for 1.5 x the warm-up's rate, so that rounds rarely replay.
                        rate = max(args.paypal_events_per_s, int(1.5 * warm_rps.get(target, 0)))
                    request_makers[target].write(path, count or max(1, int(seconds * rate)))
                    return
                write_requests(path, secret, count or int(seconds * args.events_per_s), prefix)

            try:
                for port in ports.values():
                    wait_ready(f"http://127.0.0.1:{port}/healthz")
                for target in args.targets:
                    port = ports[server_of(target)]
                    warm = workdir / f"{target}-warm.tsv"
                    write(target, warm, args.warmup, target + "w")
                    warm_stats = run_wrk(port, warm, args.warmup, args.connections, args.threads)
                    warm_rps[target] = warm_stats["rps"]
                    warm.unlink()
                # Alternate short rounds, so a change of load on the machine hits every target.
                for round_no in range(args.rounds):
                    for target in args.targets:
                        server = server_of(target)
                        measured = workdir / f"{target}-{round_no}.tsv"
                        write(target, measured, round_s, f"{target}{round_no}")
                        pid = processes[server].pid
                        cpu_before = process_cpu_seconds(pid)
                        loop_before = thread_cpu_seconds(pid)
                        stats = run_wrk(
                            ports[server],
                            measured,
                            round_s,
                            args.connections,
                            args.threads,
                        )
                        cpu_after = process_cpu_seconds(pid)
                        loop_after = thread_cpu_seconds(pid)
                        if cpu_before is not None and cpu_after is not None and stats["requests"]:
                            stats["cpu_us"] = (cpu_after - cpu_before) / stats["requests"] * 1e6
                        if loop_before is not None and loop_after is not None and stats["requests"]:
                            stats["loop_cpu_us"] = (
                                (loop_after - loop_before) / stats["requests"] * 1e6
                            )
                        runs[target].append(stats)
                        measured.unlink()
                paced_rate = latency_rate(args, runs)
                for target in args.targets if paced_rate else ():
                    # The same offered rate for every target, well below each one's maximum:
                    # p99 of a server that keeps up, not of a queue of 64 waiting connections.
                    measured = workdir / f"{target}-paced.tsv"
                    rate = args.paypal_events_per_s if target == "paypal" else None
                    count = int(args.latency_duration * paced_rate * 1.25)
                    if rate is not None:  # RSA signing is slow: at most the throughput share
                        count = min(count, int(args.latency_duration * rate))
                    write(target, measured, args.latency_duration, f"{target}p", count)
                    stats = run_wrk(
                        ports[server_of(target)],
                        measured,
                        args.latency_duration,
                        args.latency_connections,
                        args.threads,
                        mean_delay_ms=args.latency_connections / paced_rate * 1000,
                    )
                    stats["offered_rps"] = paced_rate
                    stats["connections"] = args.latency_connections
                    stats["duration_s"] = args.latency_duration
                    paced[target] = stats
                    measured.unlink()
            finally:
                for process in processes.values():
                    stop_server(process)
            for target, target_runs in runs.items():
                ordered = sorted(target_runs, key=lambda stats: stats["rps"])
                results[target] = {
                    **ordered[len(ordered) // 2],
                    "rounds": target_runs,
                    "connections": args.connections,
                }
                cpu = sorted(run["cpu_us"] for run in target_runs if "cpu_us" in run)
                if cpu:
                    results[target]["cpu_us_median"] = cpu[len(cpu) // 2]
                loop_cpu = sorted(r["loop_cpu_us"] for r in target_runs if "loop_cpu_us" in r)
                if loop_cpu:
                    results[target]["loop_cpu_us_median"] = loop_cpu[len(loop_cpu) // 2]
                if target in paced:
                    results[target]["paced"] = paced[target]
    finally:
        if certs is not None:
            certs.stop()
    if args.keep:
        print(f"logs and request files kept in {workdir}")
    else:
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
        if "loop_cpu_us_median" in stats:
            print(
                f"{target:>5}: event-loop thread CPU per request "
                f"{stats['loop_cpu_us_median']:.0f} us (median)"
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
    for line in source_table(results):
        print(line)


def latency_rate(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> float:
    """The offered rate of the paced latency runs (0: none): ``--latency-rate``, or with
    ``auto`` half the slowest target's median round, in whole hundreds (at least 100/s)."""
    if args.latency_rate == "off":
        return 0.0
    if args.latency_rate != "auto":
        return float(args.latency_rate)
    medians = []
    for target_runs in runs.values():
        ordered = sorted(run["rps"] for run in target_runs)
        if ordered:
            medians.append(ordered[len(ordered) // 2])
    if not medians:
        return 0.0
    return float(max(100, int(min(medians) / 2 / 100) * 100))


def _verdict(met: bool) -> str:
    return "met" if met else "**NOT met**"


def source_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: each measured target against the bare endpoint of the same run, saturated
    (64 connections as fast as answered), then paced (the same offered rate for all)."""
    if "bare" not in results or len(results) < 2:
        return []
    bare = results["bare"]
    bare_p99 = bare["p99_us"] / 1000
    lines = [
        "",
        f"Saturated ({bare['connections']} connections, each sending as soon as it is "
        f"answered; the median of {len(bare['rounds'])} rounds):",
        "",
        "| target | req/s (median round) | ratio to bare | goal >= 0.45 | p50 | p99 "
        "| p99 / bare's p99 | CPU/request | bare/target CPU | non-2xx | replayed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, stats in results.items():
        ratio = stats["rps"] / bare["rps"]
        p99_ms = stats["p99_us"] / 1000
        cpu = stats.get("cpu_us_median")
        cpu_ratio = bare.get("cpu_us_median", 0) / cpu if cpu else None
        goal = "-" if target == "bare" else _verdict(ratio >= SOURCE_GOAL_RATIO)
        name = "kartapay" if target == "real" else target
        lines.append(
            f"| {name} | {stats['rps']:.0f} | {ratio:.2f} | {goal} "
            f"| {stats['p50_us'] / 1000:.2f} ms | {p99_ms:.2f} ms | {p99_ms / bare_p99:.2f} "
            f"| {f'{cpu:.0f} us' if cpu else '-'} "
            f"| {f'{cpu_ratio:.2f}' if cpu_ratio else '-'} | {stats['non2xx']} "
            f"| {stats['wrapped']} |"
        )
    lines.append("")
    if bare_p99 > P99_GOAL_MS:
        lines.append(
            f"Saturated p99: bare's own is {bare_p99:.1f} ms, over the {P99_GOAL_MS:.0f} ms "
            "goal: at saturation p99 measures the queue of connections and the machine's load; "
            "compare each target with bare (p99 / bare's p99) and read the paced run."
        )
    else:
        met = [
            ("kartapay" if t == "real" else t)
            for t, st in results.items()
            if t != "bare" and st["p99_us"] / 1000 <= P99_GOAL_MS
        ]
        lines.append(
            f"Saturated p99 <= {P99_GOAL_MS:.0f} ms: bare {bare_p99:.1f} ms; met by "
            f"{', '.join(met) or 'no target'}."
        )
    paced = {t: st["paced"] for t, st in results.items() if "paced" in st}
    if paced:
        first = next(iter(paced.values()))
        lines += [
            "",
            f"Paced: {first['offered_rps']:.0f} req/s offered to each target "
            f"({first['connections']} connections, each waiting a random time, exponential, after "
            f"each answer; one {first['duration_s']:g} s run per target after the saturated "
            "rounds):",
            "",
            "| target | req/s achieved | p50 | p99 | max | non-2xx | replayed | p99 <= 10 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for target, stats in paced.items():
            p99_ms = stats["p99_us"] / 1000
            name = "kartapay" if target == "real" else target
            lines.append(
                f"| {name} | {stats['rps']:.0f} | {stats['p50_us'] / 1000:.2f} ms "
                f"| {p99_ms:.2f} ms | {stats['max_us'] / 1000:.1f} ms | {stats['non2xx']} "
                f"| {stats['wrapped']} | {_verdict(p99_ms <= P99_GOAL_MS)} |"
            )
    return lines


START = "<!-- bench.ingest:start -->"
END = "<!-- bench.ingest:end -->"
RESULTS_PATH = Path(__file__).with_name("results.md")
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between this benchmark's markers replaced by ``body`` (appended,
    with the markers, when absent)."""
    block = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        return head + block + tail
    return text.rstrip() + "\n\n" + block + "\n"


def section(results: dict[str, dict[str, Any]], load: tuple[float, float]) -> str:
    """The markdown this run writes into ``bench/results.md`` and ``docs/benchmarks.md``."""
    return "\n".join(
        [
            "Latest `python -m bench.ingest`, finished "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs shared "
            f"with other work, load average (1 min) {load[0]:.1f} at the start and "
            f"{load[1]:.1f} at the end.",
            *source_table(results),
            "",
            "Every saturated round, req/s (the spread is the machine's): "
            + "; ".join(
                f"{'kartapay' if target == 'real' else target} "
                + " / ".join(f"{run['rps']:.0f}" for run in stats["rounds"])
                for target, stats in results.items()
            )
            + ".",
            *loop_cpu_line(results),
        ]
    )


def loop_cpu_line(results: dict[str, dict[str, Any]]) -> list[str]:
    """The event-loop thread's CPU per request of each target (median round), when measured:
    the server's CPU per request less what its other threads (PayPal's RSA checks) did."""
    measured = {
        t: st["loop_cpu_us_median"] for t, st in results.items() if "loop_cpu_us_median" in st
    }
    if not measured:
        return []
    return [
        "",
        "Event-loop thread CPU per request (median round): "
        + ", ".join(
            f"{'kartapay' if target == 'real' else target} {cpu:.0f} us"
            for target, cpu in measured.items()
        )
        + ".",
    ]


def write_sections(text: str) -> None:
    for path, title in (
        (RESULTS_PATH, "# Ingestion per source (issue 11)\n\n"),
        (DOCS_PATH, ""),
    ):
        current = path.read_text() if path.exists() else ""
        path.write_text(replace_section(current, title + text))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per target")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--events-per-s", type=int, default=30_000, help="pre-signed events per second of run"
    )
    parser.add_argument(
        "--source-events-per-s",
        type=int,
        default=12_000,
        help="events per second of run for the stripe, huri and mvola-km targets",
    )
    parser.add_argument(
        "--paypal-events-per-s",
        type=int,
        default=6_000,
        help="PayPal events per second of run, at least (each is RSA-signed beforehand, which is "
        "slow); 1.5 x the warm-up's req/s when that is more",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=list(TARGETS),
        choices=TARGETS,
        help="bare endpoint, real (the kartapay source) and the sources measured one by one",
    )
    parser.add_argument(
        "--latency-rate",
        default="auto",
        help="req/s offered to each target in the paced latency run: a number, 'auto' (half "
        "the slowest target's median round) or 'off'",
    )
    parser.add_argument("--latency-duration", type=float, default=4.0, help="seconds per target")
    parser.add_argument("--latency-connections", type=int, default=16)
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; do not write bench/results.md and docs/benchmarks.md",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and request files")
    parser.add_argument("--serve", choices=["bare", "real"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_target(args.serve, args.port)
        return 0
    load_before = os.getloadavg()[0]
    results = bench(args)
    report(results)
    if not args.no_write and "bare" in results and len(results) > 1:
        write_sections(section(results, (load_before, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
