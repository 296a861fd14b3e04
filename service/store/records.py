"""The deliveries of a payment as history and replay see them, wherever they are kept.

A delivery lives as a hash (``layout.DELIVERY``) while it is pending (queued, active) or dead.
Once it is delivered or dropped, ``lua/lib/lines.lua`` (``shrink``) replaces the hash by one
short field of the payment's state hash (``layout.records_key`` = ``PAYMENT_STATE``: one key
per payment at rest), which lives as long as the state (``FINAL_STATE_TTL_S``, 10 days, once
the payment is final; ``delivery_done_ttl_s`` if the state was already gone); its transition's
snapshot (the body) goes once no pending or dead delivery refers to it.

A record field is ``{sub}:{seq}`` and its value
``state,attempts,last status,created,last,done,last error,status``: ``state`` ``d`` delivered,
``x`` dropped; ``created`` in ms after the hash's field ``t0`` (the creation time of the first
delivery recorded there); ``last`` (the last attempt) and ``done`` in ms after ``created``,
``done`` empty when equal to ``last``; ``status`` only for a final step other than the main
line's (canceled or failed, which share a seq); empty trailing parts are left out, and the
value is cut to 64 bytes (the error first), so a small hash stays a compact listpack. The
webhook-id and the event type are derived from (payment id, status) as processing derives
them.

:func:`payment_deliveries` reads both kinds and returns each delivery with the same fields
(:data:`FIELDS`), all strings, ``""`` for what is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis.asyncio as aioredis

from service.domain.events import transition_id
from service.domain.lifecycle import MAIN_LINE, SEQ, TERMINAL
from service.store.layout import delivery_key, parse_record_field, records_key

FIELDS = (
    "sub",
    "tid",
    "payment_id",
    "seq",
    "type",
    "state",
    "attempts",
    "last_status",
    "last_error",
    "last_ms",
    "created_ms",
    "delivered_ms",
    "dead_ms",
)
STATES = {"d": "delivered", "x": "dropped"}
# The statuses that are ever a transition (init never is).
_EMITTED = [s for s in MAIN_LINE if s != "init"] + list(TERMINAL)


BASE_FIELD = "t0"


def is_record_field(name: str) -> bool:
    """Whether a field of the state hash is a delivery record (``{sub}:{seq}``)."""
    sub, sep, seq = name.rpartition(":")
    return bool(sep and sub and seq.isdigit())


def parse_record(payment_id: str, name: str, value: str, base_ms: int) -> dict[str, str]:
    """One delivery, from a record field and its value; ``base_ms``: the hash's ``t0``."""
    sub, seq = parse_record_field(name)
    parts = value.split(",")
    parts += [""] * (8 - len(parts))
    state, attempts, last_status, created, last_delta, done_delta, error, status = parts[:8]
    if not status:
        status = MAIN_LINE[seq] if seq < len(MAIN_LINE) else ""
    created_ms = base_ms + int(created or 0)
    done_delta = done_delta or last_delta

    def at(delta: str) -> str:
        return str(created_ms + int(delta)) if delta else ""

    full = STATES.get(state, state)
    return {
        "sub": sub,
        "tid": transition_id(payment_id, status) if status else "",
        "payment_id": payment_id,
        "seq": str(seq),
        "type": f"payment.{status}" if status else "",
        "state": full,
        "attempts": attempts or "0",
        "last_status": last_status,
        "last_error": error,
        "last_ms": at(last_delta),
        "created_ms": str(created_ms),
        "delivered_ms": at(done_delta) if full == "delivered" else "",
        "dead_ms": "",
    }


def from_hash(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """One delivery, from its (pending or dead) hash."""
    text = {k.decode(): v.decode() for k, v in fields.items() if k != b"body"}
    return {name: text.get(name, "") for name in FIELDS}


async def payment_deliveries(
    redis: aioredis.Redis, payment_id: str, subscriber_ids: Iterable[str]
) -> list[dict[str, str]]:
    """Every delivery of ``payment_id`` still known, each with :data:`FIELDS`: the finished ones
    of any subscriber (their records), and the pending and dead ones of ``subscriber_ids`` (their
    hashes, looked up per transition the payment can have). Ordered by subscriber (those of
    ``subscriber_ids`` first, in that order) then seq."""
    subs = list(subscriber_ids)
    tids = [transition_id(payment_id, status) for status in _EMITTED]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(records_key(payment_id))
        for sub in subs:
            for tid in tids:
                pipe.hgetall(delivery_key(sub, tid))
        replies = await pipe.execute()
    found: dict[tuple[str, int], dict[str, str]] = {}
    # The hash also holds the state's own fields (seq, status, ...) and history's packed,
    # binary run fields: only the base time and the record fields are decoded.
    records: dict[str, str] = {}
    base_ms = 0
    for raw_name, raw_value in replies[0].items():
        name = raw_name.decode(errors="replace")
        if name == BASE_FIELD:
            base_ms = int(raw_value or 0)
        elif is_record_field(name):
            records[name] = raw_value.decode()
    for name, value in records.items():
        row = parse_record(payment_id, name, value, base_ms)
        found[(row["sub"], int(row["seq"]))] = row
    for fields in replies[1:]:
        if fields:
            row = from_hash(fields)
            found[(row["sub"], int(row["seq"] or SEQ.get(row["type"][8:], 0)))] = row
    rank = {sub: n for n, sub in enumerate(subs)}
    return [found[k] for k in sorted(found, key=lambda k: (rank.get(k[0], len(subs)), k[0], k[1]))]
