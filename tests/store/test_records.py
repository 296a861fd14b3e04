"""service.store.records: a finished delivery's record is read back with the fields history
expects, from the compact form lua/lib/lines.lua writes."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from service.domain.events import transition_id
from service.store import layout
from service.store.records import FIELDS, from_hash, parse_record, payment_deliveries

BASE = 1_764_600_000_000


def test_delivered_record_reads_back_whole() -> None:
    """A delivered record: times from the base and deltas, tid and type from (payment, seq)."""
    row = parse_record("pay_1", "ledger:4", "d,2,204,15,120", BASE)
    assert set(row) == set(FIELDS)
    assert row == {
        "sub": "ledger",
        "tid": transition_id("pay_1", "captured"),
        "payment_id": "pay_1",
        "seq": "4",
        "type": "payment.captured",
        "state": "delivered",
        "attempts": "2",
        "last_status": "204",
        "last_error": "",
        "last_ms": str(BASE + 15 + 120),
        "created_ms": str(BASE + 15),
        "delivered_ms": str(BASE + 15 + 120),
        "dead_ms": "",
    }


def test_dropped_record_with_an_error_and_a_terminal_status() -> None:
    """A dropped canceled delivery: its own status (canceled shares seq 6), done time apart
    from the last attempt, the error kept, no delivered time."""
    row = parse_record("pay_1", "crm:ops:6", "x,1,500,-3,10,40,HTTP 500;boom,canceled", BASE)
    assert (row["sub"], row["seq"], row["type"]) == ("crm:ops", "6", "payment.canceled")
    assert row["tid"] == transition_id("pay_1", "canceled")
    assert (row["state"], row["last_error"], row["delivered_ms"]) == (
        "dropped",
        "HTTP 500;boom",
        "",
    )
    assert (row["created_ms"], row["last_ms"]) == (str(BASE - 3), str(BASE - 3 + 10))


def test_pending_hash_reads_with_the_same_fields() -> None:
    """A pending or dead delivery's hash gives the same fields (unknown ones empty)."""
    row = from_hash({b"sub": b"ledger", b"state": b"dead", b"dead_ms": b"5", b"gen": b"3"})
    assert set(row) == set(FIELDS)
    assert (row["sub"], row["state"], row["dead_ms"], row["delivered_ms"]) == (
        "ledger",
        "dead",
        "5",
        "",
    )


async def seed_state(redis: aioredis.Redis, payment_id: str, extra: dict[str, Any]) -> None:
    """A completed payment's state hash with crm's record of seq 2 (delivered), plus ``extra``."""
    await redis.hset(
        layout.payment_state_key(payment_id),
        mapping={
            "seq": "5",
            "status": "completed",
            "t0": BASE,
            "crm:2": "d,1,200,0,5",
            **extra,
        },
    )


async def test_payment_deliveries_reads_records_and_pending_hashes(redis: aioredis.Redis) -> None:
    """Records of any subscriber (even one no longer asked about) and the pending hashes of the
    subscribers asked about come back together, by subscriber then seq."""
    await seed_state(redis, "pay_1", {"old:1": "x"})
    pending = layout.delivery_key("crm", transition_id("pay_1", "approved"))
    await redis.hset(
        pending, mapping={"sub": "crm", "seq": "3", "state": "active", "attempts": "2"}
    )
    rows = await payment_deliveries(redis, "pay_1", ["crm"])
    assert [(r["sub"], r["seq"], r["state"]) for r in rows] == [
        ("crm", "2", "delivered"),
        ("crm", "3", "active"),
        ("old", "1", "dropped"),
    ]


async def test_payment_deliveries_skips_history_binary_fields(redis: aioredis.Redis) -> None:
    """History's packed, binary timeline fields in the same state hash are skipped, not decoded
    (a 500 of the payment view otherwise)."""
    await seed_state(
        redis,
        "pay_2",
        {
            layout.HISTORY_HEADER: b"\xb1\x00\xff",
            layout.HISTORY_RUN.format(n="0"): b"\x81\xb1\xfe binary",
        },
    )
    rows = await payment_deliveries(redis, "pay_2", [])
    assert [(r["sub"], r["seq"], r["state"]) for r in rows] == [("crm", "2", "delivered")]
