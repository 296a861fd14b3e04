"""``HistoryStore``'s delivery reads over issue 14's storage: a finished delivery is a record of
its payment's state hash, found by (subscriber, webhook-id) through the subscriber's attempt log
or, failing that, the newest payments of history's list; pending ones are read from their
hashes beside the records."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from service.domain.events import transition_id
from service.domain.lifecycle import SEQ
from service.store.history import HistoryStore
from service.store.layout import (
    HISTORY_PAYMENTS,
    attempt_log_key,
    delivery_key,
    payment_state_key,
)

PID = "pay_reads"
T0 = 1_800_000_000_000


async def finished(redis: aioredis.Redis, sub: str, status: str) -> str:
    """A delivered record of ``status`` for ``sub`` in PID's state hash; its webhook-id."""
    await redis.hset(  # type: ignore[misc]
        payment_state_key(PID),
        mapping={"t0": str(T0), f"{sub}:{SEQ[status]}": "d,1,200,10,5"},
    )
    return transition_id(PID, status)


async def test_finished_delivery_found_through_the_history_list(redis: aioredis.Redis) -> None:
    """With no attempt log naming it, a finished delivery is found through the payments of
    history's list (its webhook-id derived), with its record's fields."""
    tid = await finished(redis, "ledger", "captured")
    await redis.lpush(HISTORY_PAYMENTS, "pay_other", PID, "pay_newer")  # type: ignore[misc]
    found = await HistoryStore(redis).delivery("ledger", tid)
    assert found is not None
    assert (found.payment_id, found.state, found.type, found.attempts) == (
        PID,
        "delivered",
        "payment.captured",
        1,
    )
    assert (found.created_ms, found.last_ms, found.delivered_ms, found.dead_ms) == (
        T0 + 10,
        T0 + 15,
        T0 + 15,
        None,
    )


async def test_finished_delivery_found_through_the_attempt_log(redis: aioredis.Redis) -> None:
    """A payment no longer in history's list: the subscriber's attempt log names it."""
    tid = await finished(redis, "ledger", "approved")
    entry = {"webhook_id": tid, "payment_id": PID, "status": 200}
    await redis.lpush(attempt_log_key("ledger"), orjson.dumps(entry))  # type: ignore[misc]
    found = await HistoryStore(redis).delivery("ledger", tid)
    assert found is not None and (found.payment_id, found.webhook_id) == (PID, tid)


async def test_unknown_finished_delivery_is_none(redis: aioredis.Redis) -> None:
    """A record no list or log leads to, or another subscriber's webhook-id: None."""
    tid = await finished(redis, "ledger", "captured")
    store = HistoryStore(redis)
    assert await store.delivery("ledger", tid) is None
    await redis.lpush(HISTORY_PAYMENTS, PID)  # type: ignore[misc]
    assert await store.delivery("crm", tid) is None


async def test_payment_deliveries_join_pending_hashes_and_records(redis: aioredis.Redis) -> None:
    """A payment's deliveries to the subscribers asked: finished ones from their records and a
    pending one from its hash, oldest transition first; other subscribers' records left out."""
    await finished(redis, "ledger", "approved")
    await finished(redis, "analytics", "approved")
    pending = transition_id(PID, "captured")
    await redis.hset(  # type: ignore[misc]
        delivery_key("ledger", pending),
        mapping={
            "sub": "ledger",
            "tid": pending,
            "payment_id": PID,
            "seq": SEQ["captured"],
            "type": "payment.captured",
            "state": "queued",
            "attempts": 0,
            "created_ms": T0 + 50,
        },
    )
    by_payment = await HistoryStore(redis).deliveries_of_payments([PID], ["ledger"])
    assert [(d.subscriber, d.type, d.state) for d in by_payment[PID]] == [
        ("ledger", "payment.approved", "delivered"),
        ("ledger", "payment.captured", "queued"),
    ]
