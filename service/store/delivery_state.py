"""The worker's side of the delivery state: Lua scripts (``lua/delivery_acquire.lua``,
``lua/delivery_finish.lua``, ``lua/delivery_release.lua``, ``lua/delivery_resume.lua``) over the
keys of :mod:`service.store.deliveries`. Deliveries are
created by processing's compare-and-set
(:mod:`service.store.payments`), in the same step that records the transition.

- :meth:`FanoutStore.acquire` lets an attempt start, or parks the delivery: over the concurrency
  cap, breaker open, probe in flight, or subscriber disabled. A parked delivery holds no worker
  and has no job of its own: the subscriber's one wake job brings it back (below).
- :meth:`FanoutStore.resume`, after a crash, makes the deferred safety-net jobs of the attempts
  in flight of some subscribers due when their slot's lease ends (``lua/delivery_resume.lua``).
- :meth:`FanoutStore.finish` records the attempt and moves the delivery on: delivered, retried
  later (a fresh job), dead-lettered, or parked (outcome ``gone``: a 410, or a subscriber the
  send-time guards paused); then it wakes parked deliveries. After a
  success it may acquire the line's next delivery for the caller in the same step. A failure that
  opens the breaker enqueues that cycle's wake job.
- :meth:`FanoutStore.release` is the subscriber's wake job (``fanout_wake``, one per breaker
  cycle, or a recheck of deliveries parked over the cap): at the end of a cool-down it acquires
  the longest-parked delivery as the half-open probe, for the job to send; with the breaker
  closed it gives parked deliveries jobs, as many as there are free slots.

Both scripts refuse to act on a stale copy of the subscriber registry (see
:class:`service.store.subscribers.SubscriberCache`): ``acquire`` answers ``reload``, and ``finish``
hands nothing over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.store.batcher import Arg, ScriptBatcher, run_script
from service.store.compression import decompress
from service.store.layout import DEAD_ALL as DEAD_ALL_KEY
from service.store.layout import (
    OPERATOR_TTL_S,
    SUBSCRIBERS_VERSION,
    arq_job_key,
    attempt_log_key,
    breaker_key,
    dead_key,
    deliver_job_target,
    delivery_key,
    inflight_key,
    waiting_key,
)
from service.store.scripts import Script

ACQUIRE = Script.load("delivery_acquire")
FINISH = Script.load("delivery_finish")
RESUME = Script.load("delivery_resume")
RELEASE = Script.load("delivery_release")


@dataclass(frozen=True, slots=True)
class Acquired:
    """What :meth:`FanoutStore.acquire` decided: ``ok``/``probe`` start; the rest park or skip.

    When the attempt may start, what it sends comes along, read in the same script: the body
    (its transition's snapshot, decompressed here: the bytes processing built), the attempts so
    far, and the payment id, event type and webhook receipt time (for the log line and the
    latency metric).
    """

    verdict: str
    until_ms: int
    body: bytes | None = None
    attempts: int = 0
    job_id: str = ""
    """The job whose attempt this is (for the line's next delivery acquired by
    :meth:`FanoutStore.finish`, or a head started by processing, the safety-net job)."""
    payment_id: str = ""
    event_type: str = ""
    received_at_ms: int = 0

    @property
    def may_send(self) -> bool:
        return self.verdict in ("ok", "probe")

    @property
    def subscriber_id(self) -> str:
        return deliver_job_target(self.job_id)[0]

    @property
    def webhook_id(self) -> str:
        return deliver_job_target(self.job_id)[1]

    @classmethod
    def started(cls, job_id: str, fields: list[Any], verdict: str = "ok") -> Acquired:
        """A started attempt from ``delivery_fields``: body (compressed snapshot; empty when it
        is gone), attempts, payment id, type, received ms."""
        body, attempts, payment_id, event_type, received = (list(fields) + [None] * 5)[:5]
        return cls(
            verdict,
            0,
            decompress(body) if body else None,
            int(attempts or 0),
            job_id,
            _text(payment_id or b""),
            _text(event_type or b""),
            int(received or 0),
        )

    @classmethod
    def from_reply(cls, reply: list[Any], job_id: str) -> Acquired:
        """From ``try_acquire``'s reply: {verdict, until_ms[, delivery fields]}."""
        verdict = _text(reply[0])
        if len(reply) > 2:
            return cls.started(job_id, reply[2:], verdict)
        return cls(verdict, int(reply[1]), job_id=job_id)


@dataclass(frozen=True, slots=True)
class Finished:
    result: str
    """delivered, retry, dead, parked, dropped, or stale."""
    woken: int
    dead_letters: int
    handed: Acquired | None = None
    """The next delivery of the same (subscriber, payment), acquired for the caller to run at
    once (only with ``hold_ms``); its queued job is deferred as a safety net."""


@dataclass(frozen=True, slots=True)
class Released:
    """What a subscriber's wake job found (:meth:`FanoutStore.release`)."""

    verdict: str
    """reload, disabled, open, probing, idle, probe or released."""
    count: int = 0
    """open: until when (ms); probing: the probe's lease end; released: deliveries given a job."""
    probe: Acquired | None = None
    """With ``probe``: the longest-parked delivery, started as the half-open probe for the caller
    to send at once (its queued job deferred by the hold, as the safety net)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FanoutStore:
    """Atomic delivery state changes for the workers."""

    def __init__(
        self,
        redis: aioredis.Redis,
        queue_name: str,
        operator_ttl_s: int = OPERATOR_TTL_S,
        batcher: ScriptBatcher | None = None,
    ) -> None:
        """``operator_ttl_s``: how long a dead letter (its hash and snapshot) is kept.
        ``batcher``: the finishes of concurrent attempts go out through it, pipelined on one
        connection (fewer writes and round trips, a deadline per call; docs/fanout.md), else
        each is its own call on ``redis``."""
        self.redis = redis
        self.queue_name = queue_name
        self.operator_ttl_s = operator_ttl_s
        self.batcher = batcher

    async def acquire(
        self,
        *,
        subscriber_id: str,
        transition_id: str,
        gen: int,
        job_id: str,
        enabled: bool,
        cap: int,
        lease_ms: int,
        open_jitter_ms: int,
        now_ms: int,
        subscribers_version: str,
        recheck_ms: int = 0,
    ) -> Acquired:
        """Start the attempt of job ``job_id``, or park the delivery. A started attempt holds
        its slot for ``lease_ms`` unless renewed; a delivery parked over the cap has its job due
        after ``recheck_ms`` (0: after the lease) unless a finish wakes it sooner."""
        reply = await ACQUIRE(
            self.redis,
            [
                self.queue_name,
                SUBSCRIBERS_VERSION,
                delivery_key(subscriber_id, transition_id),
                waiting_key(subscriber_id),
                inflight_key(subscriber_id),
                breaker_key(subscriber_id),
            ],
            [
                now_ms,
                subscriber_id,
                transition_id,
                gen,
                job_id,
                "1" if enabled else "0",
                cap,
                lease_ms,
                open_jitter_ms,
                subscribers_version,
                recheck_ms,
            ],
        )
        return Acquired.from_reply(reply, job_id)

    async def finish(
        self,
        *,
        subscriber_id: str,
        transition_id: str,
        gen: int,
        job_id: str,
        outcome: str,
        retry_at_ms: int | None,
        breaker_failures: int,
        breaker_cooldown_ms: int,
        cap: int,
        enabled: bool,
        done_ttl_s: int,
        log_entry: dict[str, Any] | None,
        log_cap: int,
        status: str,
        error: str,
        now_ms: int,
        hold_ms: int = 0,
        lease_ms: int = 0,
        subscribers_version: str = "",
        open_jitter_ms: int = 0,
        recheck_ms: int = 0,
    ) -> Finished:
        """Record the attempt and move the delivery on. ``open_jitter_ms``: added to the end of
        the cool-down for the wake job of a breaker this failure opens; ``recheck_ms`` (0: none):
        when deliveries stay parked after the wake-ups, the subscriber's recheck is due then
        (unless one is pending)."""
        keys: list[Arg] = [
            self.queue_name,
            SUBSCRIBERS_VERSION,
            delivery_key(subscriber_id, transition_id),
            inflight_key(subscriber_id),
            breaker_key(subscriber_id),
            attempt_log_key(subscriber_id),
            waiting_key(subscriber_id),
            DEAD_ALL_KEY,
            dead_key(subscriber_id),
            arq_job_key(job_id),
        ]
        args: list[Arg] = [
            now_ms,
            subscriber_id,
            transition_id,
            gen,
            job_id,
            outcome,
            "retry" if retry_at_ms is not None else "dead",
            retry_at_ms or 0,
            breaker_failures,
            breaker_cooldown_ms,
            cap,
            "1" if enabled else "0",
            done_ttl_s,
            b"" if log_entry is None else orjson.dumps(log_entry),
            log_cap,
            status,
            error,
            hold_ms,
            lease_ms,
            subscribers_version,
            open_jitter_ms,
            recheck_ms,
            self.operator_ttl_s,
        ]
        reply = await run_script(FINISH, self.redis, self.batcher, keys, args)
        handed = _text(reply[3])
        return Finished(
            result=_text(reply[0]),
            woken=int(reply[1]),
            dead_letters=int(reply[2]),
            handed=Acquired.started(handed, reply[4:]) if handed else None,
        )

    async def release(
        self,
        *,
        subscriber_id: str,
        enabled: bool,
        cap: int,
        lease_ms: int,
        hold_ms: int,
        recheck_ms: int,
        open_jitter_ms: int,
        now_ms: int,
        subscribers_version: str,
    ) -> Released:
        """The subscriber's wake job (``lua/delivery_release.lua``): the half-open probe taken
        from the parked deliveries, or parked deliveries given jobs as slots allow."""
        reply = await RELEASE(
            self.redis,
            [
                self.queue_name,
                SUBSCRIBERS_VERSION,
                waiting_key(subscriber_id),
                inflight_key(subscriber_id),
                breaker_key(subscriber_id),
            ],
            [
                now_ms,
                subscriber_id,
                "1" if enabled else "0",
                cap,
                lease_ms,
                hold_ms,
                recheck_ms,
                open_jitter_ms,
                subscribers_version,
            ],
        )
        verdict = _text(reply[0])
        probe = Acquired.started(_text(reply[2]), reply[3:], verdict) if len(reply) > 2 else None
        return Released(verdict, int(reply[1]), probe)

    async def resume(self, subscriber_ids: Sequence[str], now_ms: int) -> int:
        """Make the deferred safety-net job of each attempt in flight for ``subscriber_ids`` due
        when its slot's lease ends (at once if it lapsed): called by a job that runs again after
        its worker died, so what that worker was sending resumes within a lease. How many jobs
        were made due earlier."""
        if not subscriber_ids:
            return 0
        keys = [self.queue_name, *(inflight_key(sub) for sub in subscriber_ids)]
        return int(await RESUME(self.redis, keys, [now_ms]))
