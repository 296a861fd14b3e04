"""The handler behind the ``process_event`` job: read the payment's true state, record it, emit
its transitions with their deliveries, and start the first deliveries for the job to send.

:class:`EventProcessor` is the plain handler that the tests drive directly; the arq job around
it is :func:`workers.processing.job.process_event`. Delivery is reached only through
:class:`workers.delivery.Deliveries`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from service.clock import now_ms
from service.domain.events import EventHint, Transition
from service.domain.lifecycle import SEQ, TIMESTAMP_FIELD, UnknownStatusError, steps_after
from service.kartapay import errors
from service.kartapay.models import PaymentRecord
from service.settings import Settings
from service.store.dead_letters import EventDeadLetters
from service.store.layout import CONVERGENCE_SOURCE
from service.store.leases import Lease, Leases
from service.store.payments import Candidate, PaymentStateStore, RecordResult, StaleSubscribers
from service.store.subscribers import (
    RELOAD_TRIES,
    RegistryKeepsChanging,
    Subscriber,
    SubscriberCache,
)
from workers import metrics
from workers.delivery import Deliveries, StartedDelivery, bodies_only
from workers.processing.retry_policy import FetchRetryPolicy

log = structlog.get_logger("kartahook.process")

# Reschedules ``process_event`` for a hint: (hint with its next attempt, delay in seconds).
Scheduler = Callable[[EventHint, float], Awaitable[None]]


class PaymentReader(Protocol):
    async def get(self, payment_id: str) -> PaymentRecord: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run did: ``processed``, ``coalesced``, ``retry``, ``dead_lettered``, or
    ``lease_lost`` (its fetch lock lapsed while it ran, and another run has the payment)."""

    outcome: str
    emitted: tuple[str, ...] = ()
    fetches: int = 0
    reason: str = ""
    retry_in_s: float | None = None
    deliveries: tuple[StartedDelivery, ...] = ()
    """The deliveries created and started for this run to send at once."""
    fetched: str | None = None
    """The payment status its last fetch found (None: no fetch answered)."""
    fetched_ms: int = 0
    """When its last fetch answered (0: none did)."""


class _GiveUp(Exception):
    def __init__(self, reason: str, last_error: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.last_error = last_error


@dataclass(frozen=True, slots=True)
class InlineDelivery:
    """How a processing run starts the deliveries it creates, as a delivery job would."""

    enabled: bool = True
    lease_ms: int = 30_000
    """How long a started delivery holds its slot unless renewed (the worker's lease)."""
    hold_ms: int | None = None
    """How long its job waits, as the safety net (None: as long as the lease)."""
    default_cap: int = 4
    """Per-subscriber concurrency cap when the subscriber sets none."""
    breaker_cooldown_s: float = 60.0
    """Used for the breaker jitter when the processor is given no :class:`Deliveries`."""

    def hold(self) -> int:
        return self.lease_ms if self.hold_ms is None else self.hold_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> InlineDelivery:
        return cls(
            lease_ms=settings.delivery_lease_ms,
            hold_ms=settings.delivery_hold_ms,
            default_cap=settings.delivery_concurrency,
            breaker_cooldown_s=settings.delivery_breaker_cooldown_s,
        )


class EventProcessor:
    """Fetch, compare-and-set, hand over: the logic of one ``process_event`` run."""

    def __init__(
        self,
        store: PaymentStateStore,
        reader: PaymentReader,
        subscribers: SubscriberCache,
        dead_letters: EventDeadLetters,
        schedule: Scheduler,
        policy: FetchRetryPolicy,
        timeout_s: float = 30.0,
        inline: InlineDelivery | None = None,
        deliveries: Deliveries | None = None,
        leases: Leases | None = None,
    ) -> None:
        self._leases = leases
        self._store = store
        self._reader = reader
        self._subscribers = subscribers
        self._dead_letters = dead_letters
        self._schedule = schedule
        self._policy = policy
        self._timeout_s = timeout_s
        self._inline = inline or InlineDelivery(enabled=False)
        self._deliveries = deliveries or bodies_only(self._inline.breaker_cooldown_s)

    async def handle(self, hint: EventHint, token: str, inline_until: float = 0.0) -> Outcome:
        """Process one hint. ``token`` identifies this run (the arq job id) for the fetch lock.

        The deliveries it creates that are first in their line are started and returned in
        :attr:`Outcome.deliveries` for the caller to send at once, with their jobs deferred by
        the lease as the safety net, when the compare-and-set happens before ``inline_until``
        (``time.monotonic()``) and inline delivery is on; otherwise their jobs are due at once.
        """
        if not await self._store.acquire(hint.payment_id, token):
            return Outcome("coalesced")
        held: list[Lease] = []
        try:
            return await self._handle_locked(hint, token, inline_until, held)
        finally:
            if self._leases is not None:
                for lease in held:
                    self._leases.drop(lease)

    async def _handle_locked(
        self, hint: EventHint, token: str, inline_until: float, held: list[Lease]
    ) -> Outcome:
        """:meth:`handle` once the fetch lock is taken: its lease, and the slots of the
        deliveries started for this run, are renewed while the run lasts (``held``)."""
        lock = None if self._leases is None else self._leases.hold_lock(hint.payment_id, token)
        if lock is not None:
            held.append(lock)
        fetches = 0
        emitted: list[str] = []
        deliveries: list[StartedDelivery] = []
        fetched: str | None = None
        fetched_ms = 0
        try:
            async with asyncio.timeout(self._timeout_s):
                while True:
                    fetches += 1
                    record = await self._fetch(hint.payment_id)
                    fetched = None if record.status is None else str(record.status.value)
                    fetched_ms = now_ms()
                    inline = self._inline.enabled and time.monotonic() < inline_until
                    hold_ms = self._inline.hold() if inline else 0
                    result, statuses = await self._record(hint, token, record, hold_ms)
                    emitted += statuses
                    deliveries += result.started
                    if self._leases is not None:
                        held += [
                            self._leases.hold_slot(a.subscriber_id, a.job_id)
                            for a in result.started
                        ]
                    if result.fetch_again and lock is not None and lock.lost:
                        # The lock lapsed and another run holds the payment: it fetches again.
                        return Outcome(
                            "lease_lost",
                            tuple(emitted),
                            fetches,
                            deliveries=tuple(deliveries),
                            fetched=fetched,
                            fetched_ms=fetched_ms,
                        )
                    if not result.fetch_again:
                        return Outcome(
                            "processed",
                            tuple(emitted),
                            fetches,
                            deliveries=tuple(deliveries),
                            fetched=fetched,
                            fetched_ms=fetched_ms,
                        )
        except (errors.KartaPayError, UnknownStatusError, TimeoutError) as exc:
            await self._store.release_for_retry(hint.payment_id, token)
            try:
                delay = self._retry_delay(hint, exc)
            except _GiveUp as give_up:
                await self._dead_letters.add(hint, give_up.reason, give_up.last_error)
                return Outcome(
                    "dead_lettered",
                    tuple(emitted),
                    fetches,
                    give_up.reason,
                    deliveries=tuple(deliveries),
                    fetched=fetched,
                    fetched_ms=fetched_ms,
                )
            await self._schedule(replace(hint, attempt=hint.attempt + 1), delay)
            return Outcome(
                "retry",
                tuple(emitted),
                fetches,
                _describe(exc),
                round(delay, 3),
                deliveries=tuple(deliveries),
                fetched=fetched,
                fetched_ms=fetched_ms,
            )

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
        self, hint: EventHint, token: str, record: PaymentRecord, hold_ms: int
    ) -> tuple[RecordResult, list[str]]:
        payment = record.to_json()
        status = payment.get("status")
        if status not in SEQ:
            raise UnknownStatusError(f"unknown payment status {status!r}")
        steps = steps_after(payment, -1)
        transitions = [
            Transition(
                payment_id=hint.payment_id,
                status=step.status,
                seq=step.seq,
                occurred_at=step.occurred_at,
                source=hint.source,
                event_id=hint.event_id,
                received_at_ms=hint.received_at_ms,
                payment=payment,
            )
            for step in steps
        ]
        for _ in range(RELOAD_TRIES):
            subscribers = await self._subscribers.all()
            candidates = match_subscribers(transitions, subscribers, self._deliveries.body_for)
            try:
                result = await self._store.record(
                    hint.payment_id,
                    token,
                    seq=SEQ[status],
                    status=status,
                    at=str(payment.get(TIMESTAMP_FIELD.get(status, ""), "") or ""),
                    candidates=candidates,
                    subscribers_version=self._subscribers.version,
                    received_at_ms=hint.received_at_ms,
                    caps={s.id: s.cap(self._inline.default_cap) for s in subscribers},
                    hold_ms=hold_ms,
                    lease_ms=self._inline.lease_ms,
                    open_jitter_ms=self._deliveries.open_jitter_ms(),
                )
            except StaleSubscribers:
                await self._subscribers.refresh()
                continue
            break
        else:
            raise RegistryKeepsChanging(f"the subscriber registry changed {RELOAD_TRIES} times")
        # The script emits, in order, the candidates past the state it found recorded.
        emitted = [c for c in candidates if c.seq > result.previous_seq][: result.emitted]
        for candidate in emitted:
            metrics.TRANSITIONS_EMITTED.labels(candidate.status).inc()
            for subscriber_id in candidate.subscriber_ids:
                metrics.DELIVERIES_CREATED.labels(subscriber_id).inc()
        if hint.source == CONVERGENCE_SOURCE:
            for candidate in emitted:
                metrics.CONVERGENCE_TRANSITIONS.labels(candidate.status).inc()
            if emitted:
                log.warning(
                    "convergence_found_transitions",
                    payment_id=hint.payment_id,
                    transitions=[c.status for c in emitted],
                )
        if result.stuck:
            metrics.PAYMENTS_STUCK.inc()
            log.warning(
                "payment_stuck",
                payment_id=hint.payment_id,
                status=status,
                alert="not terminal at the convergence horizon: see GET /admin/payments/stuck",
            )
        return result, [c.status for c in emitted]

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


def match_subscribers(
    transitions: Sequence[Transition],
    subscribers: Sequence[Subscriber],
    body_for: Callable[[Transition], bytes],
) -> list[Candidate]:
    """Each transition with the enabled subscribers that want it (one delivery each), and the
    body they are sent (``body_for``, called only when somebody wants it)."""
    enabled = [s for s in subscribers if s.enabled]
    candidates = []
    for t in transitions:
        ids = tuple(s.id for s in enabled if s.wants(t.event_type, t.source, t.payment))
        body = body_for(t) if ids else b""
        candidates.append(Candidate(t.seq, t.status, t.id, t.event_type, body, ids))
    return candidates


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
