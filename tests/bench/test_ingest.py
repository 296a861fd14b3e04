"""The ingestion benchmark (``bench.ingest``): its table's verdicts, and one tiny real run
(wrk, both servers, the PayPal certificate server) so the code cannot rot. Not issue 11's goals."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from bench import ingest


def stats(rps: float, p99_ms: float, **extra: Any) -> dict[str, Any]:
    """One target's result as ``bench`` returns it."""
    return {
        "rps": rps,
        "p50_us": p99_ms * 500,
        "p99_us": p99_ms * 1000,
        "max_us": p99_ms * 2000,
        "non2xx": 0,
        "wrapped": 0,
        "rounds": [{"rps": rps}],
        "connections": 64,
        **extra,
    }


def paced(rps: float, p99_ms: float) -> dict[str, Any]:
    return {**stats(rps, p99_ms), "offered_rps": 1000.0, "connections": 16, "duration_s": 4.0}


def row(lines: list[str], name: str, after: str = "") -> list[str]:
    """The cells of ``name``'s row in the first table after the line containing ``after``."""
    start = next(i for i, line in enumerate(lines) if after in line)
    line = next(line for line in lines[start:] if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_verdicts_per_measure() -> None:
    """The ratio goal is judged on the saturated rounds, the p99 goal on the paced run; each
    row shows its p99 as a multiple of bare's, and a bare p99 over 10 ms is called out."""
    results = {
        "bare": stats(10_000, 40.0, paced=paced(990, 2.0)),
        "real": stats(5_000, 20.0, paced=paced(980, 8.0)),
        "paypal": stats(4_000, 60.0, paced=paced(900, 12.5)),
    }
    lines = ingest.source_table(results)
    assert row(lines, "kartapay", "Saturated")[2:6] == ["0.50", "met", "10.00 ms", "20.00 ms"]
    assert row(lines, "kartapay", "Saturated")[6] == "0.50"  # p99 / bare's p99
    assert row(lines, "paypal", "Saturated")[2:4] == ["0.40", "**NOT met**"]
    assert row(lines, "paypal", "Saturated")[6] == "1.50"
    assert any("bare's own is 40.0 ms" in line for line in lines)
    assert row(lines, "kartapay", "Paced")[-1] == "met"
    assert row(lines, "paypal", "Paced")[-1] == "**NOT met**"
    assert any(line.startswith("Paced: 1000 req/s offered") for line in lines)


def test_latency_rate() -> None:
    """``auto`` offers half the slowest target's median round, in hundreds; a number is used
    as given; ``off`` skips the paced run."""
    runs = {"bare": [{"rps": 9000.0}, {"rps": 12000.0}, {"rps": 11000.0}], "paypal": []}
    runs["paypal"] = [{"rps": 2500.0}, {"rps": 3100.0}, {"rps": 2900.0}]
    args = ingest.parse_args([])
    assert ingest.latency_rate(args, runs) == 1400.0
    assert ingest.latency_rate(ingest.parse_args(["--latency-rate", "750"]), runs) == 750.0
    assert ingest.latency_rate(ingest.parse_args(["--latency-rate", "off"]), runs) == 0.0


def test_replace_section_keeps_the_rest_of_the_file() -> None:
    """The benchmark's section is appended once, then replaced in place; the rest is kept."""
    first = ingest.replace_section("# Doc\n\ntext\n", "one")
    assert first.startswith("# Doc\n\ntext\n") and ingest.START in first
    second = ingest.replace_section(first + "\n## after\n", "two")
    assert "one" not in second and "two" in second
    assert second.endswith("\n## after\n") and second.count(ingest.START) == 1


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_tiny_run_bare_and_paypal() -> None:
    """A one-second run of bare and PayPal: every request answered 2xx in the rounds and in
    the paced run (the certificate fetched over https and cached), and the table built."""
    args = ingest.parse_args(
        [
            "--targets", "bare", "paypal",
            "--duration", "1", "--rounds", "1", "--warmup", "1",
            "--paypal-events-per-s", "400",
            "--latency-rate", "100", "--latency-duration", "1", "--latency-connections", "4",
            "--no-write",
        ]
    )  # fmt: skip
    results = ingest.bench(args)
    for target in ("bare", "paypal"):
        assert results[target]["requests"] > 0
        assert results[target]["non2xx"] == 0
        assert results[target]["paced"]["requests"] > 0
        assert results[target]["paced"]["non2xx"] == 0
    assert results["paypal"]["paced"]["rps"] < 200  # paced near 100/s, not saturated
    lines = ingest.source_table(results)
    assert row(lines, "paypal", "Paced")[-1] in ("met", "**NOT met**")
    # The event-loop thread is measured apart from the process (PayPal's verifier thread).
    for target in ("bare", "paypal"):
        assert results[target]["loop_cpu_us_median"] > 0
    assert "Event-loop thread CPU per request" in ingest.section(results, (1.0, 1.0))
