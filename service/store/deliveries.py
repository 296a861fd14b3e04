"""Delivery state in Redis, the admin side: dead letters, replay, wake, the attempt log.

Fan-out (``workers/delivery``) drives deliveries through :mod:`service.store.delivery_state`; the
admin API reads dead letters and attempt logs, replays dead letters and wakes parked deliveries
here. Every state change that involves more than one key is one Lua script
(``lua/delivery_*.lua``), so a crash between two writes never loses or duplicates a delivery.

The keys (:mod:`service.store.layout`; ``{s}`` subscriber id, ``{t}`` transition id =
webhook-id, ``{p}`` payment id):

- ``DELIVERY`` ``{s}:{t}``: hash, one pending or dead delivery: state (queued, active, dead),
  gen (bumped whenever its next arq job changes, so a stale job knows it is stale), attempts,
  seq, payment_id, type, when its webhook was received, times, last status/error. Kept
  ``LINE_TTL_S`` after its last write while pending, ``operator_ttl_s`` once dead. Delivered or
  dropped, it shrinks to a field of the payment's state hash (:mod:`service.store.records`), which
  also stops the same delivery from being created again.
- ``SNAPSHOT`` ``{t}``: hash, the body every delivery of the transition sends (compressed,
  :mod:`service.store.compression`: the same bytes on every attempt and replay) and the count
  of pending and dead deliveries that refer to it; deleted with the last reference.
- ``ORDER`` ``{s}:{p}``: zset of the pending deliveries of one (subscriber, payment), score = seq.
- ``HEAD`` ``{s}:{p}``: string, the one active delivery of that pair (its head). Only the head has
  an arq job; the next one is activated when the head is delivered or dead-lettered.
- ``WAITING`` ``{s}``: zset of parked heads (over the cap, breaker open, probe in flight,
  subscriber disabled), scored by when they first parked, with no job of their own; woken when
  a slot frees, by the subscriber's wake job (``WAKE_JOB_ID``: the probe at the end of a breaker
  cycle, or a recheck), or when the subscriber is enabled.
- ``INFLIGHT`` ``{s}``: zset of in-flight job ids, score = lease end (a dead worker's slot
  expires).
- ``BREAKER`` ``{s}``: hash, circuit breaker: fails, open_until (ms), probe, probe_until; and
  recheck_at (ms), when the subscriber's pending recheck wake job is due.
- ``DEAD_ALL``: zset of ``{s}/{t}`` by dead-letter time; ``DEAD`` ``{s}``: zset of ``{t}``.
- ``ATTEMPT_LOG`` ``{s}``: list, the attempt log, newest first, capped.

Each attempt is a fresh arq job (``layout.DELIVER_JOB_ID``) written by the Lua scripts in arq's
own format, so no job outlives its job-key TTL however long the retry schedule is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.domain.events import transition_id
from service.domain.lifecycle import MAIN_LINE, SEQ, TERMINAL
from service.store.compression import decompress
from service.store.layout import DEAD_ALL as DEAD_ALL_KEY
from service.store.layout import (
    attempt_log_key,
    breaker_key,
    dead_key,
    delivery_key,
    parse_dead_member,
    snapshot_key,
    waiting_key,
)
from service.store.scripts import Script

REPLAY = Script.load("delivery_replay")
WAKE = Script.load("delivery_wake")

# The states a dead-letter replay and a resend take a delivery from (pending ones are sent anyway).
REPLAYABLE = ("dead",)
RESENDABLE = ("dead", "delivered", "dropped")
# The statuses a transition can have (init never is one).
EMITTED = tuple(s for s in (*MAIN_LINE, *TERMINAL) if s != MAIN_LINE[0])


def _status_of(payment_id: str, tid: str) -> str | None:
    """The status of the transition ``tid`` of ``payment_id`` (None: not one of its)."""
    for status in EMITTED:
        if transition_id(payment_id, status) == tid:
            return status
    return None


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered delivery, as the admin API and the CLI show it."""

    subscriber: str
    transition_id: str
    payment_id: str
    type: str
    seq: int
    attempts: int
    dead_at_ms: int
    last_status: str
    last_error: str
    replays: int
    body: dict[str, Any] | None = None
    """The event sent (``{"id", "type", "timestamp", "data"}``), when asked for."""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "subscriber": self.subscriber,
            "webhook_id": self.transition_id,
            "payment_id": self.payment_id,
            "type": self.type,
            "seq": self.seq,
            "attempts": self.attempts,
            "dead_at_ms": self.dead_at_ms,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "replays": self.replays,
        }
        if self.body is not None:
            data["body"] = self.body
        return data


def _text(fields: dict[bytes, bytes], name: str) -> str:
    return fields.get(name.encode(), b"").decode()


def _int(fields: dict[bytes, bytes], name: str) -> int:
    try:
        return int(fields.get(name.encode(), b"0"))
    except ValueError:
        return 0


def dead_letter_from_hash(
    fields: dict[bytes, bytes], snapshot: bytes | None = None
) -> DeadLetter | None:
    """A dead letter from its delivery hash (and its body from its snapshot, when given)."""
    if _text(fields, "state") != "dead":
        return None
    body = orjson.loads(decompress(snapshot)) if snapshot else None
    return DeadLetter(
        subscriber=_text(fields, "sub"),
        transition_id=_text(fields, "tid"),
        payment_id=_text(fields, "payment_id"),
        type=_text(fields, "type"),
        seq=_int(fields, "seq"),
        attempts=_int(fields, "attempts"),
        dead_at_ms=_int(fields, "dead_ms"),
        last_status=_text(fields, "last_status"),
        last_error=_text(fields, "last_error"),
        replays=_int(fields, "replays"),
        body=body,
    )


class DeliveryAdmin:
    """What operators do with deliveries: read dead letters and attempt logs, replay, wake."""

    def __init__(self, redis: aioredis.Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name

    async def dead_letter_count(self, subscriber_id: str | None = None) -> int:
        key = DEAD_ALL_KEY if subscriber_id is None else dead_key(subscriber_id)
        return int(await self.redis.zcard(key))

    async def _refs(
        self, subscriber_id: str | None, since_ms: int | None, limit: int | None
    ) -> list[tuple[str, str]]:
        low = "-inf" if since_ms is None else since_ms
        start, num = (None, None) if limit is None else (0, limit)
        key = DEAD_ALL_KEY if subscriber_id is None else dead_key(subscriber_id)
        members: list[bytes] = await self.redis.zrangebyscore(key, low, "+inf", start, num)
        if subscriber_id is None:
            refs = [parse_dead_member(m.decode()) for m in members]
            return [ref for ref in refs if ref is not None]
        return [(subscriber_id, m.decode()) for m in members]

    async def dead_letters(
        self, subscriber_id: str | None = None, since_ms: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one subscriber and since a time."""
        refs = await self._refs(subscriber_id, since_ms, limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub, tid in refs:
                pipe.hgetall(delivery_key(sub, tid))
            rows = await pipe.execute()
        letters = [dead_letter_from_hash(fields) for fields in rows]
        return [letter for letter in letters if letter is not None]

    async def dead_letter(self, subscriber_id: str, transition_id: str) -> DeadLetter | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(delivery_key(subscriber_id, transition_id))
            pipe.hget(snapshot_key(transition_id), "z")
            fields, snapshot = await pipe.execute()
        return dead_letter_from_hash(fields, snapshot) if fields else None

    async def replay(self, subscriber_id: str, transition_id: str, now_ms: int) -> str:
        """Queue a dead letter again, same webhook-id: 'ok', 'missing' or 'not_dead'."""
        result, _ = await self.resend(subscriber_id, transition_id, now_ms, REPLAYABLE)
        return result

    async def resend(
        self,
        subscriber_id: str,
        transition_id: str,
        now_ms: int,
        states: tuple[str, ...] = RESENDABLE,
        payment_id: str | None = None,
    ) -> tuple[str, str]:
        """Queue a delivery in one of ``states`` again, same webhook-id, at its place in its
        line: ('ok', job id of its attempt when it became the line's head, else ''), or
        ('missing' | 'not_dead' (another state) | 'no_body' (past retention), ''). A finished
        (delivered or dropped) delivery is only a record of its payment: found with
        ``payment_id``, and resent while its transition's snapshot (the body) exists."""
        keys = [
            self.queue_name,
            delivery_key(subscriber_id, transition_id),
            DEAD_ALL_KEY,
            dead_key(subscriber_id),
        ]
        args: list[str | int] = [now_ms, subscriber_id, transition_id, ",".join(states)]
        status = _status_of(payment_id, transition_id) if payment_id else None
        if payment_id and status is not None:
            args += [payment_id, SEQ[status], status]
        result, job_id = await REPLAY(self.redis, keys, args)
        return _decoded(result), _decoded(job_id)

    async def replay_many(
        self, subscriber_id: str | None, since_ms: int | None, now_ms: int
    ) -> list[dict[str, str]]:
        """Replay every dead letter of a subscriber, or since a time, or both."""
        replayed: list[dict[str, str]] = []
        for sub, tid in await self._refs(subscriber_id, since_ms, None):
            if await self.replay(sub, tid, now_ms) == "ok":
                replayed.append({"subscriber": sub, "webhook_id": tid})
        return replayed

    async def wake(self, subscriber_id: str, count: int, now_ms: int) -> int:
        """Reset the breaker (its pending wake job goes with it) and start up to ``count``
        parked deliveries of a subscriber."""
        keys = [self.queue_name, breaker_key(subscriber_id), waiting_key(subscriber_id)]
        woken = await WAKE(self.redis, keys, [now_ms, subscriber_id, count])
        return int(woken)

    async def attempts(self, subscriber_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The attempt log of a subscriber, newest first."""
        key = attempt_log_key(subscriber_id)
        rows: list[bytes] = await self.redis.lrange(key, 0, max(limit, 1) - 1)  # type: ignore[misc]
        return [orjson.loads(row) for row in rows]
