"""What happens to a payment after the API calls: submit, cancel, forced failure, a planned
outcome, and the automatic steps submitted -> approved -> captured -> completed (or -> failed,
or -> canceled when that outcome was planned).

One scheduler task, started in the app's lifespan, runs the automatic steps when they are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random

import structlog

from sandbox.config import SandboxConfig
from sandbox.errors import BadRequest, NotFound
from sandbox.payments_store import FINAL_STATUSES, PaymentRecord, PaymentStore, TransitionError

log = structlog.get_logger("sandbox.lifecycle")

NEXT_STEP = {"submitted": "approved", "approved": "captured", "captured": "completed"}
CANCELABLE = frozenset({"init", "pending", "submitted"})
SUBMITTABLE = frozenset({"init", "pending"})
OUTCOMES = ("completed", "failed", "canceled")


class StepScheduler:
    """Runs ``(payment id, expected status)`` steps at their due time, in one task."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._heap: list[tuple[float, int, str, str]] = []
        self._counter = 0
        self._wake = asyncio.Event()

    def schedule(self, delay_s: float, payment_id: str, expected_status: str) -> None:
        due = asyncio.get_running_loop().time() + delay_s
        self._counter += 1
        heapq.heappush(self._heap, (due, self._counter, payment_id, expected_status))
        self._wake.set()

    def pending(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            due = self._heap[0][0]
            now = loop.time()
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due - now)
                continue
            _, _, payment_id, expected = heapq.heappop(self._heap)
            try:
                self._lifecycle.advance(payment_id, expected)
            except Exception:
                log.exception("lifecycle step failed", payment_id=payment_id)


class Lifecycle:
    """The status rules on top of the store, with randomness from one seeded generator."""

    def __init__(self, store: PaymentStore, config: SandboxConfig, rng: random.Random) -> None:
        self.store = store
        self.config = config
        self.rng = rng
        self.scheduler = StepScheduler(self)

    def _record(self, payment_id: str) -> PaymentRecord:
        record = self.store.get(payment_id)
        if record is None:
            raise NotFound()
        return record

    def submit(self, payment_id: str, source: str | None) -> PaymentRecord:
        record = self._record(payment_id)
        if record.status not in SUBMITTABLE:
            raise BadRequest(f"a payment in status {record.status} cannot be submitted")
        plan = dict(record.body["plan"])
        chosen = source or plan.get("source")
        if chosen is None:
            raise BadRequest("body.source is required: the payment has no plan.source")
        plan["source"] = chosen
        billing = dict(record.body["billing"])
        billing["providerId"] = f"{chosen.lower()}_{self.rng.getrandbits(64):016x}"
        if record.outcome is None:
            record.will_fail = self.rng.random() < self.config.fail_ratio
        self.store.move(payment_id, "submitted", plan=plan, billing=billing)
        log.info("payment submitted", payment_id=payment_id, source=chosen)
        self.scheduler.schedule(self.config.step_delay_s, payment_id, "submitted")
        return record

    def cancel(self, payment_id: str) -> PaymentRecord:
        record = self._record(payment_id)
        if record.status not in CANCELABLE:
            raise BadRequest(f"a payment in status {record.status} cannot be canceled")
        self.store.move(payment_id, "canceled")
        log.info("payment canceled", payment_id=payment_id)
        return record

    def fail(self, payment_id: str) -> PaymentRecord:
        """Force a payment that is not final into ``failed`` now (sandbox control)."""
        record = self._record(payment_id)
        if record.status in FINAL_STATUSES:
            raise BadRequest(f"a payment in status {record.status} cannot fail")
        self.store.move(payment_id, "failed")
        log.info("payment failed on request", payment_id=payment_id)
        return record

    def plan_outcome(self, payment_id: str, outcome: str) -> PaymentRecord:
        """Decide where a payment's automatic steps lead (sandbox control): ``completed``,
        ``failed`` (from ``submitted``, whatever ``fail_ratio`` says) or ``canceled`` (from
        ``submitted``); only before its first automatic step."""
        if outcome not in OUTCOMES:
            raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
        record = self._record(payment_id)
        if record.status not in CANCELABLE:
            raise BadRequest(f"the outcome of a payment in status {record.status} is decided")
        record.outcome = outcome
        record.will_fail = outcome == "failed"
        log.info("payment outcome planned", payment_id=payment_id, outcome=outcome)
        return record

    def advance(self, payment_id: str, expected_status: str) -> None:
        """One automatic step, if the payment is still where the step was planned."""
        record = self.store.get(payment_id)
        if record is None or record.status != expected_status:
            return  # canceled or failed meanwhile
        try:
            if expected_status == "submitted" and record.outcome == "canceled":
                self.store.move(payment_id, "canceled")
            elif expected_status == "submitted" and record.will_fail:
                self.store.move(payment_id, "failed")
            else:
                self.store.move(payment_id, NEXT_STEP[expected_status])
        except TransitionError:
            return
        log.info("payment moved", payment_id=payment_id, status=record.status)
        if record.status in NEXT_STEP:
            self.scheduler.schedule(self.config.step_delay_s, payment_id, record.status)
