"""Smoke tests of the memory benchmark (``bench.memory``): its measurements run on tiny numbers
against real processes, so the code cannot rot. They assert sane outputs, not issue 14's goals."""

from __future__ import annotations

from pathlib import Path

from bench import memory
from service.store import layout

KNOWN = {kp.pattern for kp in layout.KEY_PATTERNS}


def quiet(_: str) -> None:
    """Progress lines of the benchmark, dropped."""


def test_keys_are_classified_by_their_layout_pattern() -> None:
    """Keys map to the layout pattern that matches them whole; the queue by its name."""
    matchers = memory.pattern_matchers("arq:queue")
    assert memory.classify("arq:queue", matchers) == "{queue}"
    assert memory.classify("arq:queue:health-check", matchers) == "{queue}:health-check"
    assert memory.classify(layout.DEAD_ALL, matchers) == layout.DEAD_ALL
    assert memory.classify(layout.dead_key("s1"), matchers) == layout.DEAD
    assert memory.classify(layout.delivery_key("s1", "evt_1"), matchers) == layout.DELIVERY
    assert memory.classify(layout.payment_state_key("p1"), matchers) == layout.PAYMENT_STATE
    assert memory.classify(layout.SUBSCRIBERS_VERSION, matchers) == layout.SUBSCRIBERS_VERSION
    assert memory.classify("something:else", matchers) == "(other)"


def test_replace_section_keeps_the_rest_of_the_file() -> None:
    """The benchmark's section is appended once, then replaced in place; the rest is kept."""
    first = memory.replace_section("# E2E\n\ntable\n", "one")
    assert first.startswith("# E2E\n\ntable\n")
    assert memory.START in first and "one" in first
    second = memory.replace_section(first + "\n## after\n", "two")
    assert "one" not in second and "two" in second
    assert second.startswith("# E2E\n\ntable\n") and second.endswith("\n## after\n")
    assert second.count(memory.START) == 1


async def test_lifecycle_measures_queued_and_at_rest_bytes(tmp_path: Path) -> None:
    """Five payments: positive bytes queued and at rest, deliveries in order, known patterns."""
    life = await memory.measure_lifecycle(tmp_path, 5, 1, report=quiet, timeout_s=90)
    statuses = len(memory.STATUSES)
    assert life.events >= 5 * statuses  # and payment.init, which reveals no transition
    assert life.queued_per_event > 0
    assert life.rest_per_payment > 0
    assert (life.deliveries, life.out_of_order) == (5 * statuses, 0)
    assert life.queued is not None and life.rest is not None
    assert life.queued.row(layout.EVENT).keys == 5  # one event hash per payment
    assert life.rest.row(layout.EVENT).keys == 5
    assert life.queued.row(layout.EVENT).avg_bytes > 0
    assert life.rest.row(layout.DELIVERY).keys == 0  # each shrank to its record
    assert life.rest.row(layout.PAYMENT_STATE).keys == 5  # with the records
    assert life.rest.row(layout.SNAPSHOT).keys == 0
    assert set(life.rest.no_ttl_patterns()) <= KNOWN
    assert memory.project(life).total_gb > 0
    text = "\n".join(memory.render([life], None))
    assert "bytes per queued event" in text and f"`{layout.EVENT}`" in text


async def test_outage_counts_job_runs_per_breaker_cycle(tmp_path: Path) -> None:
    """Twenty payments parked behind a 500 beside a healthy subscriber: job runs per breaker
    cycle, the healthy one served meanwhile, then all in order."""
    outage = await memory.measure_outage(
        tmp_path, 20, cooldown_s=1.0, cycles=2, report=quiet, timeout_s=90
    )
    assert outage.parked_lines >= 20
    assert len(outage.cycles) == 2
    assert all(runs > 0 for runs, _ in outage.cycles)
    assert outage.refused > 0
    assert (outage.deliveries, outage.out_of_order) == (80, 0)
    assert (outage.other_during_outage, outage.other_out_of_order) == (80, 0)
    text = "\n".join(memory.render([], outage))
    assert "per breaker cycle" in text
