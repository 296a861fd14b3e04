"""Unit tests of lifecycle derivation: which steps a fetched payment shows as passed."""

from __future__ import annotations

import pytest

from service.domain.lifecycle import SEQ, UnknownStatusError, passed_steps, steps_after

COMPLETED = {
    "status": "completed",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "submittedAt": "2026-01-01T00:00:01.000Z",
    "approvedAt": "2026-01-01T00:00:02.000Z",
    "capturedAt": "2026-01-01T00:00:03.000Z",
    "completedAt": "2026-01-01T00:00:04.000Z",
}


def test_completed_payment_yields_every_step_in_order() -> None:
    """A completed payment shows submitted, approved, captured, completed after init."""
    assert [s.status for s in steps_after(COMPLETED, -1)] == [
        "submitted",
        "approved",
        "captured",
        "completed",
    ]
    assert steps_after(COMPLETED, -1)[2].occurred_at == "2026-01-01T00:00:03.000Z"


def test_only_steps_after_the_recorded_one_are_emitted() -> None:
    """With approved recorded, only captured and completed remain; with completed, nothing."""
    assert [s.status for s in steps_after(COMPLETED, SEQ["approved"])] == ["captured", "completed"]
    assert steps_after(COMPLETED, SEQ["completed"]) == []


def test_failure_after_approval_emits_passed_steps_then_terminal() -> None:
    """A payment that failed after approval emits submitted, approved, then failed."""
    payment = {
        "status": "failed",
        "createdAt": "t0",
        "submittedAt": "t1",
        "approvedAt": "t2",
        "failedAt": "t3",
    }
    steps = steps_after(payment, -1)
    assert [(s.status, s.occurred_at) for s in steps] == [
        ("submitted", "t1"),
        ("approved", "t2"),
        ("failed", "t3"),
    ]


def test_pending_counts_only_while_current_and_timestamps_beyond_status_are_ignored() -> None:
    """pending appears only as the current status; a stray later timestamp is not a step."""
    assert [s.status for s in passed_steps({"status": "pending", "createdAt": "t0"})] == [
        "init",
        "pending",
    ]
    stray = {"status": "submitted", "submittedAt": "t1", "capturedAt": "t9"}
    assert [s.status for s in steps_after(stray, -1)] == ["submitted"]


def test_unknown_status_is_refused() -> None:
    """A status outside the lifecycle raises rather than guessing."""
    with pytest.raises(UnknownStatusError):
        passed_steps({"status": "refunded"})
