"""Per-payment state in Redis: single flight of fetches, and the atomic compare-and-set that
records a newer state and creates the deliveries of its transitions in the same step.

Keys (:mod:`service.store.layout`), for payment ``P``:

- ``PAYMENT_STATE``  hash ``seq``, ``status``, ``at``: the last recorded state; once final, only
  ``seq`` and ``status`` (what kills stale hints), kept :data:`FINAL_STATE_TTL_S`. The records
  of the payment's finished deliveries live in it too (:mod:`service.store.records`).
- ``PAYMENT_LOCK``   the token of the job that is fetching ``P`` right now (single flight).
- ``PAYMENT_DIRTY``  set when a hint arrived that no fetch has answered yet.
- ``TRANSITIONS``    a capped stream: one entry per transition emitted, for audit.
- ``CONVERGE``, ``STUCK`` and the state hash's ``cv_`` fields: the convergence schedule, kept by
  the same compare-and-set when the store has a plan (:mod:`service.store.converge`).

Scripts: ``lua/payment_lock.lua``, ``lua/payment_record.lua``, ``lua/payment_release.lua``.

The compare-and-set creates one delivery per (transition, subscriber that wants it), in the
layout of :mod:`service.store.deliveries`, with one compressed snapshot of the transition's body
for all of them, and activates the first one of each (subscriber, payment) line. Emitting and
creating deliveries is one atomic step, so a transition is never recorded without its
deliveries, nor delivered twice, and a payment's transitions enter each line in lifecycle order.

A job that finds the lock taken leaves ``dirty`` set and stops: the holder fetches again before it
lets go, so the hint is served by a fetch that started after it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.errors import StaleSubscribers as StaleSubscribers
from service.store.compression import compress
from service.store.converge import ConvergePlan
from service.store.delivery_state import Acquired
from service.store.layout import (
    CONVERGE,
    STUCK,
    SUBSCRIBERS_VERSION,
    TRANSITIONS,
    payment_dirty_key,
    payment_lock_key,
    payment_state_key,
)
from service.store.scripts import Script

LOCK = Script.load("payment_lock")
RECORD = Script.load("payment_record")
RELEASE = Script.load("payment_release")

TRANSITIONS_LOG_KEY = TRANSITIONS
# The fields of a state hash that are the state itself (payment_record.lua, the convergence
# scripts); delivery records (service.store.records) and history (service.store.history) share
# the hash.
_STATE_FIELDS = frozenset({b"seq", b"status", b"at", b"cv_first", b"cv_step"})
TRANSITIONS_LOG_MAXLEN = 100_000
# How long a payment's state lives once it is final (completed, canceled, failed), shrunk to
# (seq, status): it must outlive every hint that can still come for the payment, or a late hint
# would find no state and emit the transitions again. Hints come from the providers' retries
# (Stripe and PayPal retry for up to 3 days, within the 72 h dedupe window) and may wait in the
# queue as long as a job key lives (ARQ_EXPIRES_EXTRA_MS, 7 days): 3 + 7 days.
FINAL_STATE_TTL_S = 10 * 24 * 3600


def state_key(payment_id: str) -> str:
    return payment_state_key(payment_id)


@dataclass(frozen=True, slots=True)
class RecordResult:
    previous_seq: int
    """The sequence number recorded before (``-1``: none)."""
    emitted: int
    """How many transitions were emitted (recorded, with their deliveries)."""
    fetch_again: bool
    """A hint arrived during the fetch: the holder must fetch once more."""
    started: tuple[Acquired, ...] = ()
    """The deliveries this step activated (first in their line) and started for the caller to
    send at once (only with ``hold_ms``); their jobs are due after the hold, as safety nets."""
    stuck: bool = False
    """The payment was found still not terminal past the convergence horizon, now."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A transition that the fetched payment shows, and the subscribers that want it."""

    seq: int
    status: str
    transition_id: str
    event_type: str
    body: bytes
    """What each of its deliveries sends (``workers.delivery.message.delivery_body``)."""
    subscriber_ids: tuple[str, ...]


class PaymentStateStore:
    """The Lua scripts over one Redis connection pool."""

    def __init__(
        self,
        redis: Redis,
        queue_name: str,
        lock_ttl_ms: int,
        state_ttl_s: int = 90 * 24 * 3600,
        dirty_ttl_s: int = 7 * 24 * 3600,
        converge: ConvergePlan | None = None,
        final_state_ttl_s: int = FINAL_STATE_TTL_S,
    ) -> None:
        """``converge``: the convergence plan every record schedules the payment by
        (:mod:`service.store.converge`); None: records schedule nothing."""
        self._redis = redis
        self._queue = queue_name
        self._lock_ttl_ms = lock_ttl_ms
        self._state_ttl_s = state_ttl_s
        self._dirty_ttl_s = dirty_ttl_s
        self._final_state_ttl_s = final_state_ttl_s
        self._converge = converge.encode() if converge is not None else ""

    async def acquire(self, payment_id: str, token: str) -> bool:
        """Mark the payment as needing a fetch; take the fetch lock if nobody holds it."""
        keys = [payment_dirty_key(payment_id), payment_lock_key(payment_id)]
        got = await LOCK(self._redis, keys, [token, self._lock_ttl_ms, self._dirty_ttl_s])
        return bool(got)

    async def release_for_retry(self, payment_id: str, token: str) -> None:
        """Give the lock up after a failed fetch; the payment stays marked as needing one."""
        keys = [payment_dirty_key(payment_id), payment_lock_key(payment_id)]
        await RELEASE(self._redis, keys, [token, self._dirty_ttl_s])

    async def record(
        self,
        payment_id: str,
        token: str,
        seq: int,
        status: str,
        at: str,
        candidates: list[Candidate],
        subscribers_version: str,
        received_at_ms: int = 0,
        caps: Mapping[str, int] | None = None,
        hold_ms: int = 0,
        lease_ms: int = 0,
        open_jitter_ms: int = 0,
    ) -> RecordResult:
        """Record ``seq`` if newer, create the deliveries of the candidates past the old state,
        drop the lock.

        With ``hold_ms``, the first delivery of each line is also started for the caller, as a
        delivery job would start it (``caps``: each subscriber's concurrency cap; a slot is held
        for ``lease_ms``): the caller sends it at once, and its job is due only ``hold_ms`` from
        now, should the caller die. Without, the heads' jobs are due at once.

        Raises :class:`StaleSubscribers` when ``subscribers_version`` is not the registry's."""
        args: list[Any] = [
            seq,
            status,
            at,
            token,
            self._lock_ttl_ms,
            self._state_ttl_s,
            payment_id,
            TRANSITIONS_LOG_MAXLEN,
            subscribers_version,
            hold_ms,
            lease_ms,
            open_jitter_ms,
            len(caps or {}),
            received_at_ms,
            self._converge,
            self._final_state_ttl_s,
        ]
        for subscriber_id, cap in (caps or {}).items():
            args += [subscriber_id, cap]
        for c in candidates:
            body = compress(c.body) if c.subscriber_ids else b""
            args += [c.seq, c.status, c.transition_id, c.event_type, body]
            args += [len(c.subscriber_ids), *c.subscriber_ids]
        keys = [
            payment_state_key(payment_id),
            payment_dirty_key(payment_id),
            payment_lock_key(payment_id),
            self._queue,
            TRANSITIONS,
            SUBSCRIBERS_VERSION,
            CONVERGE,
            STUCK,
        ]
        reply = await RECORD(self._redis, keys, args)
        if int(reply[0]) == -2:
            raise StaleSubscribers
        previous, emitted, again, stuck, *flat = reply
        started = tuple(
            Acquired.started(flat[i].decode(), flat[i + 1 : i + 6]) for i in range(0, len(flat), 6)
        )
        return RecordResult(int(previous), int(emitted), bool(again), started, bool(stuck))

    async def recorded(self, payment_id: str) -> dict[str, str]:
        """The last recorded state of a payment (empty when none): the hash's fields but the
        delivery records' and history's (which share it and may hold any byte)."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(payment_state_key(payment_id))  # type: ignore[misc]
        return {
            k.decode(): v.decode(errors="replace") for k, v in raw.items() if k in _STATE_FIELDS
        }
