"""History in Redis: every read and write behind the admin API's events, payments and deliveries.

Written by the processing job (``workers/processing/job.py``) after each run of a hint, never by
ingestion (its hot path writes nothing more than before). Read by the admin API
(``service/api/admin/history_routes.py``). Decision and budget: ``docs/decisions/history.md``.

Keys and fields (:mod:`service.store.layout`), all written by one script,
``lua/history_record.lua``:

- The payment's state hash (``PAYMENT_STATE``, the one key every payment has at rest) holds its
  timeline: a header field (``HISTORY_HEADER``: first received ms, first source, the numbers of
  the first kept and the next run) and one short field per processing run of a hint
  (``HISTORY_RUN``, :class:`Run`), times relative to the header; at most
  ``history_timeline_max`` runs. Each field stays under 64 bytes for the usual event ids, so the
  small hash stays a compact listpack; the timeline lives as long as the state.
- ``HISTORY_PAYMENTS``: list of the payment ids with a timeline, newest first seen first: what
  the events and deliveries lists walk. At most ``history_index_max``; a payment first seen more
  than ``history_ttl_s`` ago leaves it (and its timeline fields its state hash) at the next
  write.
- ``HISTORY_RATE`` ``{minute}``: hash, events processed that minute by source (10 min TTL).

A payment costs a few short fields of a hash it already has and one list entry, no key of its
own and no field named by its id: ``python -m bench.history_memory`` measures it.

Everything else history shows is read where it already is: the payment's recorded state, the
convergence sets, the event's field in its payment's event hash (its archived headers and body
while retained; ``GET /admin/events/{source}/{id}`` needs the payment's id to find it: given,
or read from the event's job while it is queued), the deliveries
(:func:`service.store.records.payment_deliveries`: the hashes of pending and dead ones, the
records of finished ones, only the fields in :data:`DELIVERY_FIELDS`) and the subscribers'
attempt logs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.domain.events import EventHint, transition_id
from service.domain.lifecycle import FINAL, MAIN_LINE, TERMINAL
from service.errors import KartahookError
from service.store import records
from service.store.batcher import ScriptBatcher, run_script
from service.store.events import read_raw_record
from service.store.jobs import deserialize
from service.store.layout import (
    CONVERGE,
    CONVERGENCE_SOURCE,
    DEAD_ALL,
    EVENT_DLQ_INDEX,
    HISTORY_HEADER,
    HISTORY_PAYMENTS,
    STUCK,
    arq_job_key,
    attempt_log_key,
    breaker_key,
    dead_key,
    delivery_key,
    event_field,
    event_job_id,
    event_key,
    history_rate_key,
    inflight_key,
    parse_dead_member,
    payment_state_key,
    run_field,
    waiting_key,
)
from service.store.scripts import Script

# Every status, by its one-character code in a packed run (its index here).
STATUSES: tuple[str, ...] = (*MAIN_LINE, *TERMINAL)
_STATUS_CODE = {status: str(i) for i, status in enumerate(STATUSES)}
# The statuses a transition (and so a delivery) can have: every one but init.
EMITTED_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if s != MAIN_LINE[0])
# A processing run's outcome (``workers.processing.processor.Outcome.outcome``), one character.
OUTCOMES: dict[str, str] = {
    "processed": "p",
    "coalesced": "c",
    "retry": "r",
    "dead_lettered": "d",
    "lease_lost": "l",
}
_OUTCOME_NAME = {code: name for name, code in OUTCOMES.items()}
SEP = "\x1f"
# The source of convergence checks, packed as one character (their event id is not kept).
_CONVERGENCE = "~"

# The fields of a delivery history reads (and nothing else: the body is not among them).
DELIVERY_FIELDS: tuple[str, ...] = records.FIELDS
RECORD = Script.load("history_record")
RATE_TTL_S = 600
# How many payments one list request walks at most (a page may then be short, with a cursor).
SCAN_BUDGET = 2_000
CHUNK = 100


@dataclass(frozen=True, slots=True)
class Run:
    """One processing run of one hint, as the timeline keeps it."""

    received_ms: int
    at_ms: int
    """When its fetch answered (or the run ended, when none did)."""
    source: str
    event_id: str
    fetched: str | None
    """The status the fetch found (None: no fetch answered, or the run coalesced)."""
    outcome: str
    emitted: tuple[str, ...]
    """The transitions it recorded, in lifecycle order."""

    @property
    def is_convergence(self) -> bool:
        return self.source == CONVERGENCE_SOURCE

    def script_args(self) -> list[str | int | bytes]:
        """ARGV 2..8 of ``history_record.lua``: the run, its statuses and outcome as codes."""
        return [
            self.received_ms,
            self.at_ms,
            self.source,
            "" if self.fetched is None else _STATUS_CODE.get(self.fetched, ""),
            OUTCOMES.get(self.outcome, "?"),
            "".join(_STATUS_CODE[s] for s in self.emitted if s in _STATUS_CODE),
            b"" if self.is_convergence else pack_event_id(self.event_id),
        ]


# An event id of the usual shape (a lower-case prefix, ``_``, then lower-case hex, as KartaPay's
# test ids) is kept as its prefix and the hex's bytes: 17 bytes instead of 28.
_PACKABLE = re.compile(r"([a-z]{1,8}_)((?:[0-9a-f]{2}){4,32})")
_PACKED = b"\x00"


def pack_event_id(event_id: str) -> bytes:
    """An event id as a run field keeps it (:func:`unpack_event_id` reads it back)."""
    match = _PACKABLE.fullmatch(event_id)
    if match is None:
        return event_id.encode()
    return _PACKED + match.group(1).encode() + bytes.fromhex(match.group(2))


def unpack_event_id(raw: bytes) -> str:
    if not raw.startswith(_PACKED):
        return raw.decode(errors="replace")
    end = raw.index(b"_", 1) + 1
    return raw[1:end].decode() + raw[end:].hex()


def unpack_runs(fields: Mapping[bytes, bytes]) -> list[Run]:
    """The runs of a payment's timeline (``history_record.lua`` writes them as fields of its
    state hash, among the state's own fields), oldest first."""
    header = fields.get(HISTORY_HEADER.encode())
    if not header:
        return []
    try:
        base_text, default_source, first, nxt = header.decode().split(SEP)
        base, first_n, next_n = int(base_text, 36), int(first, 36), int(nxt, 36)
    except (ValueError, UnicodeDecodeError):
        return []
    runs = []
    for n in range(first_n, next_n):
        raw = fields.get(run_field(n).encode())
        if raw is None:
            continue
        parts = raw.split(SEP.encode(), 6)
        if len(parts) != 7:
            continue
        try:
            received, delta, source, fetched, outcome, emitted = (p.decode() for p in parts[:6])
            received_ms = base + int(received, 36)
            at_ms = received_ms + int(delta, 36)
            codes = tuple(STATUSES[int(c)] for c in emitted)
            status = STATUSES[int(fetched)] if fetched else None
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        runs.append(
            Run(
                received_ms,
                at_ms,
                source or default_source,
                unpack_event_id(parts[6]),
                status,
                _OUTCOME_NAME.get(outcome, "unknown"),
                codes,
            )
        )
    return runs


@dataclass(frozen=True, slots=True)
class Event:
    """An inbound event as history knows it: the latest run of it decides its status."""

    source: str
    event_id: str
    payment_id: str
    received_ms: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "event_id": self.event_id,
            "payment_id": self.payment_id,
            "received_ms": self.received_ms,
            "status": self.status,
        }


def events_of(payment_id: str, runs: Sequence[Run]) -> list[Event]:
    """The inbound events of a payment's runs (convergence checks are not events), newest
    first; an event run several times (retries) is listed once, with its last outcome."""
    latest: dict[tuple[str, str], Run] = {}
    for run in runs:
        if not run.is_convergence:
            latest[(run.source, run.event_id)] = run
    events = [
        Event(src, eid, payment_id, run.received_ms, run.outcome)
        for (src, eid), run in latest.items()
    ]
    return sorted(events, key=lambda e: (e.received_ms, e.source, e.event_id), reverse=True)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _int(value: bytes | None) -> int | None:
    if value is None or value == b"":
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery's summary, read from its hash (:data:`DELIVERY_FIELDS` only)."""

    subscriber: str
    webhook_id: str
    payment_id: str
    seq: int
    type: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_ms: int | None
    last_ms: int | None
    delivered_ms: int | None
    dead_ms: int | None

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Delivery | None:
        """From :func:`service.store.records.payment_deliveries`' shape (strings, '' unknown)."""
        return cls.from_fields([row.get(name, "").encode() or None for name in DELIVERY_FIELDS])

    @classmethod
    def from_fields(cls, values: Sequence[bytes | None]) -> Delivery | None:
        row = dict(zip(DELIVERY_FIELDS, values, strict=True))
        if row["state"] is None or row["sub"] is None or row["tid"] is None:
            return None
        return cls(
            subscriber=_text(row["sub"]) or "",
            webhook_id=_text(row["tid"]) or "",
            payment_id=_text(row["payment_id"]) or "",
            seq=_int(row["seq"]) or 0,
            type=_text(row["type"]) or "",
            state=_text(row["state"]) or "",
            attempts=_int(row["attempts"]) or 0,
            last_status=_int(row["last_status"]),
            last_error=_text(row["last_error"]) or None,
            created_ms=_int(row["created_ms"]),
            last_ms=_int(row["last_ms"]),
            delivered_ms=_int(row["delivered_ms"]),
            dead_ms=_int(row["dead_ms"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "subscriber": self.subscriber,
            "webhook_id": self.webhook_id,
            "payment_id": self.payment_id,
            "type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_ms": self.created_ms,
            "last_ms": self.last_ms,
            "delivered_ms": self.delivered_ms,
        }


class BadCursor(KartahookError, ValueError):
    """A list cursor this store did not write (the admin API answers 400)."""


def encode_cursor(parts: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str, shape: Sequence[type]) -> list[Any]:
    """The parts of a cursor, each of the type in ``shape``; :class:`BadCursor` otherwise."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeEncodeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("the cursor is not one this API gave") from None
    if not isinstance(parts, list) or len(parts) != len(shape):
        raise BadCursor("the cursor is not one this API gave")
    for part, kind in zip(parts, shape, strict=True):
        if not isinstance(part, kind) or isinstance(part, bool):
            raise BadCursor("the cursor is not one this API gave")
    return parts


class HistoryStore:
    """History's one door to Redis: the processing job's writes and the admin API's reads."""

    def __init__(
        self,
        redis: aioredis.Redis,
        ttl_s: int = 7 * 86_400,
        timeline_max: int = 64,
        index_max: int = 200_000,
        batcher: ScriptBatcher | None = None,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.timeline_max = timeline_max
        self.index_max = index_max
        self.batcher = batcher
        """Where :meth:`record_run` sends its script when given (the worker's: the records of
        concurrent processing jobs share one pipelined write); else one call on ``redis``."""

    @classmethod
    def from_settings(
        cls, redis: aioredis.Redis, settings: Any, batcher: ScriptBatcher | None = None
    ) -> HistoryStore:
        return cls(
            redis,
            settings.history_ttl_s,
            settings.history_timeline_max,
            settings.history_index_max,
            batcher,
        )

    # ---- writes (the processing job) ---------------------------------------------------------

    async def record_run(self, hint: EventHint, run: Run, now_ms: int) -> bool:
        """Append ``run`` to its payment's timeline (``lua/history_record.lua``); True when the
        payment is new to history. One round trip, shared with concurrent records through the
        batcher when there is one (:class:`~service.store.batcher.RedisUnavailable` then, where
        a plain call raises redis-py's errors)."""
        keys = [
            payment_state_key(hint.payment_id),
            HISTORY_PAYMENTS,
            history_rate_key(now_ms // 60_000),
        ]
        inbound = not run.is_convergence
        args: list[str | int | bytes] = [
            hint.payment_id,
            *run.script_args(),
            now_ms,
            self.ttl_s * 1000,
            self.index_max,
            self.timeline_max,
            "1" if inbound and hint.attempt == 0 else "0",
            RATE_TTL_S,
            self.ttl_s,
        ]
        return bool(await run_script(RECORD, self.redis, self.batcher, keys, args))

    async def rates(self, now_ms: int, minutes: int = 5) -> dict[str, int]:
        """Events processed in the last ``minutes`` whole minutes and this one, by source."""
        current = now_ms // 60_000
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in range(current - minutes + 1, current + 1):
                pipe.hgetall(history_rate_key(minute))
            rows = await pipe.execute()
        counts: dict[str, int] = {}
        for row in rows:
            for source, count in row.items():
                name = source.decode(errors="replace")
                counts[name] = counts.get(name, 0) + int(count)
        return counts

    # ---- reads: payments ---------------------------------------------------------------------

    async def runs(self, payment_id: str) -> list[Run]:
        """A payment's processing runs, oldest first (what is retained)."""
        return (await self.runs_of([payment_id]))[0]

    async def runs_of(self, payment_ids: Sequence[str]) -> list[list[Run]]:
        if not payment_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in payment_ids:
                pipe.hgetall(payment_state_key(pid))
            rows: list[dict[bytes, bytes]] = await pipe.execute()
        return [unpack_runs(row) for row in rows]

    async def payment_state(self, payment_id: str) -> dict[str, Any]:
        """The recorded state and convergence of a payment: ``state`` (seq, status, at, or
        None), ``next_check_ms`` (None: not scheduled), ``stuck``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(payment_state_key(payment_id), ["seq", "status", "at"])
            pipe.zscore(CONVERGE, payment_id)
            pipe.zscore(STUCK, payment_id)
            (seq, status, at), next_check, stuck = await pipe.execute()
        state = None
        if status is not None:
            state = {"seq": _int(seq) or 0, "status": status.decode(), "at": _text(at) or ""}
        return {
            "state": state,
            "terminal": state is not None and state["status"] in FINAL,
            "next_check_ms": None if next_check is None else int(next_check),
            "stuck": stuck is not None,
        }

    async def page_payments(self, after: str | None, count: int) -> list[str]:
        """Payment ids of the index, newest first seen first, after the payment ``after``
        (none: from the newest; a payment no longer listed: nothing)."""
        start = 0
        if after is not None:
            position = await self.redis.lpos(HISTORY_PAYMENTS, after)  # type: ignore[misc]
            if position is None:
                return []
            start = int(position) + 1
        rows: list[bytes] = await self.redis.lrange(HISTORY_PAYMENTS, start, start + count - 1)  # type: ignore[misc]
        return [row.decode(errors="replace") for row in rows]

    # ---- reads: deliveries -------------------------------------------------------------------

    async def deliveries(self, refs: Iterable[tuple[str, str]]) -> list[Delivery]:
        """The pending and dead deliveries that exist among ``refs`` (subscriber id,
        webhook-id), in order (finished ones have no hash: :meth:`delivery` finds them)."""
        refs = list(refs)
        if not refs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub, tid in refs:
                pipe.hmget(delivery_key(sub, tid), list(DELIVERY_FIELDS))
            rows = await pipe.execute()
        found = [Delivery.from_fields(row) for row in rows]
        return [d for d in found if d is not None]

    async def deliveries_of_payments(
        self, payment_ids: Sequence[str], subscriber_ids: Sequence[str]
    ) -> dict[str, list[Delivery]]:
        """Every delivery of each payment to each of ``subscriber_ids``, oldest transition first:
        pending and dead ones from their hashes (webhook-ids derived from (payment id, status):
        no index needed), finished ones from the payment's records."""
        wanted = set(subscriber_ids)
        by_payment: dict[str, list[Delivery]] = {}
        for pid in payment_ids:
            rows = await records.payment_deliveries(self.redis, pid, subscriber_ids)
            found = [Delivery.from_row(row) for row in rows if row["sub"] in wanted]
            items = [d for d in found if d is not None]
            items.sort(key=lambda d: (d.seq, d.subscriber))
            by_payment[pid] = items
        return by_payment

    async def delivery(self, subscriber_id: str, webhook_id: str) -> Delivery | None:
        """One delivery: its hash while pending or dead; once finished, its record, found
        through its payment (:meth:`payment_of_delivery`)."""
        found = await self.deliveries([(subscriber_id, webhook_id)])
        if found:
            return found[0]
        payment_id = await self.payment_of_delivery(subscriber_id, webhook_id)
        if payment_id is None:
            return None
        for item in (await self.deliveries_of_payments([payment_id], [subscriber_id]))[payment_id]:
            if item.webhook_id == webhook_id:
                return item
        return None

    async def payment_of_delivery(self, subscriber_id: str, webhook_id: str) -> str | None:
        """The payment of a finished delivery (a webhook-id is a digest of (payment id, status),
        not reversible): the subscriber's attempt log names it while the attempt is retained;
        else the newest :data:`SCAN_BUDGET` payments of the index are tried (bounded)."""
        for entry in (await self.attempt_log([subscriber_id]))[subscriber_id]:
            if entry.get("webhook_id") == webhook_id and entry.get("payment_id"):
                return str(entry["payment_id"])
        rows: list[bytes] = await self.redis.lrange(HISTORY_PAYMENTS, 0, SCAN_BUDGET - 1)  # type: ignore[misc]
        for row in rows:
            pid = row.decode(errors="replace")
            if any(transition_id(pid, status) == webhook_id for status in EMITTED_STATUSES):
                return pid
        return None

    async def attempt_log(self, subscriber_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Each subscriber's retained attempt log, newest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub in subscriber_ids:
                pipe.lrange(attempt_log_key(sub), 0, -1)
            rows = await pipe.execute()
        logs: dict[str, list[dict[str, Any]]] = {}
        for sub, row in zip(subscriber_ids, rows, strict=True):
            entries = []
            for raw in row:
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
            logs[sub] = entries
        return logs

    async def dead_page(
        self, subscriber_id: str | None, after: tuple[int, str] | None, count: int
    ) -> list[tuple[str, str, int]]:
        """Dead letters newest first: (subscriber, webhook-id, dead ms), after a cursor."""
        key = DEAD_ALL if subscriber_id is None else dead_key(subscriber_id)
        top: float | str = "+inf" if after is None else after[0]
        rows = await self.redis.zrevrangebyscore(
            key, top, "-inf", start=0, num=count + 64, withscores=True
        )
        out: list[tuple[str, str, int]] = []
        for member, score in rows:
            text, at = member.decode(), int(score)
            if after is not None and at == after[0] and text >= after[1]:
                continue
            if subscriber_id is None:
                parsed = parse_dead_member(text)
                if parsed is None:
                    continue
                out.append((parsed[0], parsed[1], at))
            else:
                out.append((subscriber_id, text, at))
            if len(out) >= count:
                break
        return out

    # ---- reads: events -----------------------------------------------------------------------

    async def raw_event(self, source: str, event_id: str, payment_id: str) -> dict[str, Any] | None:
        """The archived request of an event (headers, body) while retained: its field in its
        payment's event hash (the payment's id is needed to find it: :meth:`event_payment`)."""
        raw: bytes | None = await self.redis.hget(  # type: ignore[misc]
            event_key(payment_id), event_field(source, event_id)
        )
        if not raw:
            return None
        try:
            record = read_raw_record(raw)
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(record, dict):
            return None
        if record.get("source") != source or record.get("event_id") != event_id:
            return None  # another event of the payment with the same field (64 bits: never seen)
        record.setdefault("payment_id", payment_id)  # the hash's key names it
        return record

    async def event_payment(self, source: str, event_id: str) -> str | None:
        """The payment of an event while its job is queued (the job's hint names it); None
        once the job ran: the event is then found only with its payment's id (the archive is
        kept by payment, and history's timeline is the payment's)."""
        job: bytes | None = await self.redis.get(arq_job_key(event_job_id(source, event_id)))
        if job is None:
            return None
        try:
            args = deserialize(job).get("a") or []
            payment_id = args[0]["payment_id"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        return str(payment_id)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


async def walk_index(
    store: HistoryStore,
    expand: Callable[[list[str]], Awaitable[list[list[Any]]]],
    limit: int,
    cursor: str | None,
) -> Page:
    """A page of items over the payments index, newest first seen payment first: ``expand``
    gives each payment's (already filtered) items, in their order. The cursor is (0, payment
    id, items of that payment already shown); at most :data:`SCAN_BUDGET` payments are walked
    per page, so a page may be short and still have a cursor."""
    items: list[Any] = []
    after: str | None = None
    if cursor is not None:
        _, pid, skip = decode_cursor(cursor, (int, str, int))
        first = (await expand([pid]))[0]
        for n, item in enumerate(first[skip:], start=skip):
            if len(items) == limit:
                return Page(items, encode_cursor([0, pid, n]))
            items.append(item)
        after = pid
    walked = 0
    while walked < SCAN_BUDGET:
        chunk = await store.page_payments(after, CHUNK)
        if not chunk:
            return Page(items, None)
        walked += len(chunk)
        expanded = await expand(chunk)
        for pid, found in zip(chunk, expanded, strict=True):
            for n, item in enumerate(found):
                if len(items) == limit:
                    return Page(items, encode_cursor([0, pid, n]))
                items.append(item)
            after = pid
        if len(chunk) < CHUNK:
            return Page(items, None)
    assert after is not None
    return Page(items, encode_cursor([0, after, 1_000_000]))


async def overview_counts(redis: aioredis.Redis, queue_name: str) -> dict[str, int]:
    """Backlog, dead letters (deliveries, events) and stuck payments."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(queue_name)
        pipe.zcard(DEAD_ALL)
        pipe.zcard(EVENT_DLQ_INDEX)
        pipe.zcard(STUCK)
        backlog, dead, event_dead, stuck = await pipe.execute()
    return {
        "backlog": int(backlog),
        "dead_letters": int(dead),
        "event_dead_letters": int(event_dead),
        "stuck": int(stuck),
    }


async def subscriber_health(
    redis: aioredis.Redis, subscriber_ids: Sequence[str], now_ms: int
) -> list[dict[str, Any]]:
    """Breaker, slots in flight, parked and dead deliveries of each subscriber."""
    async with redis.pipeline(transaction=False) as pipe:
        for sub in subscriber_ids:
            pipe.hget(breaker_key(sub), "open_until")
            pipe.zcount(inflight_key(sub), now_ms, "+inf")
            pipe.zcard(waiting_key(sub))
            pipe.zcard(dead_key(sub))
        rows = await pipe.execute()
    health = []
    for i, sub in enumerate(subscriber_ids):
        open_until, inflight, waiting, dead = rows[4 * i : 4 * i + 4]
        until = _int(open_until) or 0
        breaker = "closed" if until == 0 else "open" if until > now_ms else "half-open"
        health.append(
            {
                "id": sub,
                "breaker": breaker,
                "open_until_ms": until or None,
                "inflight": int(inflight),
                "waiting": int(waiting),
                "dead_letters": int(dead),
            }
        )
    return health
