"""The payment lifecycle (shared by processing, fan-out and the sandbox), and the steps a
fetched payment shows as passed.

Order: ``init`` → ``pending`` → ``submitted`` → ``approved`` → ``captured`` → ``completed``;
``canceled`` and ``failed`` are terminal and can follow any state before them. ``init`` is where
every payment starts, so it is recorded but never emitted as a transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Defined in service.errors (the error tree), re-exported here.
from service.errors import UnknownStatusError as UnknownStatusError

MAIN_LINE = ("init", "pending", "submitted", "approved", "captured", "completed")
TERMINAL = ("canceled", "failed")
TERMINAL_SEQ = len(MAIN_LINE)
# No status follows these: a payment in one is done (convergence stops checking it).
FINAL = (MAIN_LINE[-1], *TERMINAL)
SEQ: dict[str, int] = {status: i for i, status in enumerate(MAIN_LINE)} | {
    status: TERMINAL_SEQ for status in TERMINAL
}
TIMESTAMP_FIELD: dict[str, str] = {
    "init": "createdAt",
    "submitted": "submittedAt",
    "approved": "approvedAt",
    "captured": "capturedAt",
    "completed": "completedAt",
    "canceled": "canceledAt",
    "failed": "failedAt",
}


@dataclass(frozen=True, slots=True)
class Step:
    """A lifecycle status the payment has reached, with the payment's own time for it."""

    status: str
    seq: int
    occurred_at: str


def passed_steps(payment: Mapping[str, Any]) -> list[Step]:
    """Every step the payment shows as passed, ``init`` first, in lifecycle order.

    A main-line step counts when its timestamp is set or it is the current status; steps after
    the current status are ignored even if a timestamp says otherwise. ``pending`` has no
    timestamp field, so it counts only while it is the current status.
    """
    status = payment.get("status")
    if status not in SEQ:
        raise UnknownStatusError(f"unknown payment status {status!r}")
    current_seq = SEQ[status]
    fallback = str(payment.get(TIMESTAMP_FIELD.get(status, ""), "") or "")
    steps: list[Step] = []
    for name in MAIN_LINE:
        seq = SEQ[name]
        if seq > current_seq:
            break
        stamp = payment.get(TIMESTAMP_FIELD.get(name, ""))
        if name == status or stamp:
            steps.append(Step(name, seq, str(stamp or fallback)))
    if status in TERMINAL:
        steps.append(Step(status, TERMINAL_SEQ, fallback))
    return steps


def steps_after(payment: Mapping[str, Any], recorded_seq: int) -> list[Step]:
    """The steps to emit when ``recorded_seq`` is the last recorded one (``-1``: none yet)."""
    return [s for s in passed_steps(payment) if s.seq > recorded_seq and s.status != "init"]
