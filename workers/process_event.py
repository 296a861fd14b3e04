"""The ``process_event`` job: read the payment's true state, record it, emit its transitions.

:func:`process_event` is the thin arq job; :class:`EventProcessor` is the plain handler that the
tests drive directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from service.event_dead_letters import EventDeadLetters
from service.jobs import FANOUT_TRANSITION, EventHint, Transition, arq_job_bytes
from service.kartapay import errors
from service.kartapay.models import PaymentRecord
from service.lifecycle import SEQ, TIMESTAMP_FIELD, UnknownStatusError, steps_after
from workers import metrics
from workers.payment_state import Candidate, PaymentStateStore
from workers.retry_policy import FetchRetryPolicy

log = structlog.get_logger("kartahook.process")

# Reschedules ``process_event`` for a hint: (hint with its next attempt, delay in seconds).
Scheduler = Callable[[EventHint, float], Awaitable[None]]


class PaymentReader(Protocol):
    async def get(self, payment_id: str) -> PaymentRecord: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run did: ``processed``, ``coalesced``, ``retry`` or ``dead_lettered``."""

    outcome: str
    emitted: tuple[str, ...] = ()
    fetches: int = 0
    reason: str = ""
    retry_in_s: float | None = None


class _GiveUp(Exception):
    def __init__(self, reason: str, last_error: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.last_error = last_error


class EventProcessor:
    """Fetch, compare-and-set, hand over: the logic of one ``process_event`` run."""

    def __init__(
        self,
        store: PaymentStateStore,
        reader: PaymentReader,
        dead_letters: EventDeadLetters,
        schedule: Scheduler,
        policy: FetchRetryPolicy,
        timeout_s: float = 30.0,
    ) -> None:
        self._store = store
        self._reader = reader
        self._dead_letters = dead_letters
        self._schedule = schedule
        self._policy = policy
        self._timeout_s = timeout_s

    async def handle(self, hint: EventHint, token: str) -> Outcome:
        """Process one hint. ``token`` identifies this run (the arq job id) for the fetch lock."""
        if not await self._store.acquire(hint.payment_id, token):
            return Outcome("coalesced")
        fetches = 0
        emitted: list[str] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                while True:
                    fetches += 1
                    record = await self._fetch(hint.payment_id)
                    done, statuses = await self._record(hint, token, record)
                    emitted += statuses
                    if done:
                        return Outcome("processed", tuple(emitted), fetches)
        except (errors.KartaPayError, UnknownStatusError, TimeoutError) as exc:
            await self._store.release_for_retry(hint.payment_id, token)
            try:
                delay = self._retry_delay(hint, exc)
            except _GiveUp as give_up:
                await self._dead_letters.add(hint, give_up.reason, give_up.last_error)
                return Outcome("dead_lettered", tuple(emitted), fetches, give_up.reason)
            await self._schedule(replace(hint, attempt=hint.attempt + 1), delay)
            return Outcome("retry", tuple(emitted), fetches, _describe(exc), round(delay, 3))

    async def _fetch(self, payment_id: str) -> PaymentRecord:
        started = time.perf_counter()
        result = "ok"
        try:
            return await self._reader.get(payment_id)
        except errors.KartaPayError as exc:
            result = type(exc).__name__
            raise
        finally:
            metrics.FETCH_SECONDS.labels(result).observe(time.perf_counter() - started)

    async def _record(
        self, hint: EventHint, token: str, record: PaymentRecord
    ) -> tuple[bool, list[str]]:
        payment = record.to_json()
        status = payment.get("status")
        if status not in SEQ:
            raise UnknownStatusError(f"unknown payment status {status!r}")
        now_ms = int(time.time() * 1000)
        candidates: list[Candidate] = []
        for step in steps_after(payment, -1):
            transition = Transition(
                payment_id=hint.payment_id,
                status=step.status,
                seq=step.seq,
                occurred_at=step.occurred_at,
                source=hint.source,
                event_id=hint.event_id,
                received_at_ms=hint.received_at_ms,
                payment=payment,
            )
            job = arq_job_bytes(FANOUT_TRANSITION, transition.to_job_args(), now_ms)
            candidates.append(Candidate(step.seq, step.status, "fan:" + transition.id, job))
        result = await self._store.record(
            hint.payment_id,
            token,
            seq=SEQ[status],
            status=status,
            at=str(payment.get(TIMESTAMP_FIELD.get(status, ""), "") or ""),
            candidates=candidates,
        )
        # The script emits, in order, the candidates past the state it found recorded.
        statuses = [c.status for c in candidates if c.seq > result.previous_seq][: result.emitted]
        for emitted_status in statuses:
            metrics.TRANSITIONS_EMITTED.labels(emitted_status).inc()
        return not result.fetch_again, statuses

    def _retry_delay(self, hint: EventHint, exc: BaseException) -> float:
        """The delay before the next try, or :class:`_GiveUp` when the hint is spent."""
        policy = self._policy
        if isinstance(exc, errors.AuthError):
            metrics.KARTAPAY_AUTH_FAILURES.inc()
            log.error(
                "kartapay_auth_failed",
                status=exc.status_code,
                alert="the KartaPay token is refused; events wait until it is fixed",
            )
            return policy.backoff_s(hint.attempt)  # never dropped, however old
        if isinstance(exc, errors.NotFoundError):
            if hint.attempt + 1 >= policy.not_found_tries:
                raise _GiveUp("not_found", _describe(exc))
            return policy.not_found_delay(hint.attempt)
        age_s = time.time() - hint.received_at_ms / 1000
        if age_s > policy.max_age_s:
            raise _GiveUp("max_age_exceeded", _describe(exc))
        retry_after = exc.retry_after if isinstance(exc, errors.ApiError) else None
        return policy.backoff_s(hint.attempt, retry_after)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def process_event(ctx: dict[str, Any], arg: dict[str, Any]) -> str:
    """arq job: process one stored webhook (see :class:`EventProcessor`)."""
    hint = EventHint.from_job_arg(arg)
    processor: EventProcessor = ctx["event_processor"]
    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(
        event_id=hint.event_id, payment_id=hint.payment_id, source=hint.source
    ):
        result = await processor.handle(hint, token=str(ctx.get("job_id", hint.job_id)))
        metrics.EVENTS_PROCESSED.labels(result.outcome).inc()
        log.info(
            "event_processed",
            outcome=result.outcome,
            transitions=list(result.emitted),
            fetches=result.fetches,
            attempt=hint.attempt,
            reason=result.reason or None,
            retry_in_s=result.retry_in_s,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    return result.outcome
