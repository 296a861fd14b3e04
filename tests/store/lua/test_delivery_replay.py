"""Replaying a dead letter, run through ``DeliveryAdmin.replay``: the delivery leaves both dead
sets, is queued again with its attempts reset, and becomes its line's head when the line has
none; a missing or not-dead delivery is left alone."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.deliveries import DEAD_ALL_KEY, breaker_key, dead_key, delivery_key
from service.store.layout import deliver_job_id, head_key, order_key, snapshot_key
from service.store.payments import state_key
from tests.store.lua.keyspace import (
    NO_TTL,
    Expected,
    assert_keyspace,
    hash_of,
    server_ms,
    ttl_s,
    zset,
)
from tests.store.lua.staging import (
    OPERATOR_TTL_S,
    OTHER_SUB,
    PID,
    QUEUE,
    SUB,
    acquire,
    admin,
    dead,
    finish,
    job_entry,
    line,
    payment_keys,
    record,
    tid,
)

T1, T2 = tid(PID, "pending"), tid(PID, "submitted")


async def dead_letter(redis: aioredis.Redis, statuses: list[str]) -> int:
    """Record a line for PID and dead-letter its head T1; the time it died."""
    await record(redis, PID, statuses)
    now = await server_ms(redis)
    assert (await acquire(redis, T1, 1, now)).verdict == "ok"
    assert (await finish(redis, T1, 1, now, "fail", status="500")).result == "dead"
    return now


DEAD_SETS: Expected = {DEAD_ALL_KEY: ("zset", NO_TTL), dead_key(SUB): ("zset", NO_TTL)}


async def test_missing_delivery_is_reported_and_nothing_written(redis: aioredis.Redis) -> None:
    """Replaying a delivery that does not exist answers 'missing' and creates no key."""
    assert await admin(redis).replay(SUB, "msg_missing", 1_000) == "missing"
    await assert_keyspace(redis, {})


async def test_active_delivery_is_not_dead(redis: aioredis.Redis) -> None:
    """Replaying a delivery that is still active answers 'not_dead' and changes nothing."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    assert await admin(redis).replay(SUB, T1, now) == "not_dead"
    await assert_keyspace(
        redis,
        {**payment_keys(), **line(SUB, [T1]), QUEUE: ("zset", NO_TTL), **job_entry(SUB, T1, 1)},
    )
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "1"


async def test_delivered_delivery_is_no_dead_letter(redis: aioredis.Redis) -> None:
    """Replaying a delivered delivery (shrunk to its record) answers 'missing' and writes
    nothing: its record keeps its done TTL."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    await acquire(redis, T1, 1, now)
    await finish(redis, T1, 1, now, "ok")
    assert await admin(redis).replay(SUB, T1, now) == "missing"
    await assert_keyspace(redis, {**payment_keys(), breaker_key(SUB): ("hash", NO_TTL)})


async def test_replay_into_an_empty_line_activates_it(redis: aioredis.Redis) -> None:
    """A dead letter replayed into an empty line leaves the dead sets and is its head again."""
    died = await dead_letter(redis, ["pending"])
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **dead(SUB, T1),
            breaker_key(SUB): ("hash", NO_TTL),
            **DEAD_SETS,
        },
    )
    now = died + 1_000
    assert await admin(redis).replay(SUB, T1, now) == "ok"
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2),
        },
    )
    assert await zset(redis, QUEUE) == {deliver_job_id(SUB, T1, 2): now}
    fields = await hash_of(redis, delivery_key(SUB, T1))
    assert {k: fields[k] for k in ("state", "gen", "attempts", "replays", "replayed_ms")} == {
        "state": "active",
        "gen": "2",
        "attempts": "0",
        "replays": "1",
        "replayed_ms": str(now),
    }
    assert await zset(redis, order_key(SUB, PID)) == {T1: 1}
    assert await redis.get(head_key(SUB, PID)) == T1.encode()


async def test_replay_behind_an_active_head_waits_in_line(redis: aioredis.Redis) -> None:
    """A dead letter whose line has an active head is queued in the line, without a job."""
    died = await dead_letter(redis, ["pending", "submitted"])
    assert await admin(redis).replay(SUB, T1, died + 1_000) == "ok"
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
        },
    )
    assert await zset(redis, QUEUE) == {deliver_job_id(SUB, T2, 1): died}
    assert await zset(redis, order_key(SUB, PID)) == {T1: 1, T2: 2}
    assert await redis.get(head_key(SUB, PID)) == T2.encode()
    fields = await hash_of(redis, delivery_key(SUB, T1))
    assert (fields["state"], fields["gen"], fields["attempts"]) == ("queued", "1", "0")


async def test_second_replay_is_not_dead(redis: aioredis.Redis) -> None:
    """Replaying the same dead letter twice: the second answers 'not_dead', counted once."""
    died = await dead_letter(redis, ["pending"])
    assert await admin(redis).replay(SUB, T1, died + 1) == "ok"
    assert await admin(redis).replay(SUB, T1, died + 2) == "not_dead"
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2),
        },
    )
    assert (await hash_of(redis, delivery_key(SUB, T1)))["replays"] == "1"


async def test_replay_leaves_other_dead_letters_indexed(redis: aioredis.Redis) -> None:
    """Replaying one of two dead letters removes only its own entries from the dead sets."""
    died = await dead_letter(redis, ["pending", "submitted"])
    assert (await acquire(redis, T2, 1, died)).verdict == "ok"
    assert (await finish(redis, T2, 1, died + 1, "fail")).result == "dead"
    assert await admin(redis).replay(SUB, T1, died + 2) == "ok"
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **dead(SUB, T2),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2),
            **DEAD_SETS,
        },
    )
    assert await zset(redis, DEAD_ALL_KEY) == {f"{SUB}/{T2}": died + 1}
    assert await zset(redis, dead_key(SUB)) == {T2: died + 1}
    assert await admin(redis).dead_letter_count() == 1


async def delivered_while_other_pending(redis: aioredis.Redis, statuses: list[str]) -> int:
    """Record a line for PID to SUB and OTHER_SUB and deliver T1 to SUB only: its snapshot
    lives on for OTHER_SUB's pending delivery. The time it was delivered."""
    await record(redis, PID, statuses, subscribers=(SUB, OTHER_SUB))
    now = await server_ms(redis)
    assert (await acquire(redis, T1, 1, now)).verdict == "ok"
    assert (await finish(redis, T1, 1, now, "ok")).result == "delivered"
    return now


async def test_resend_of_a_delivered_delivery_makes_it_pending_again(
    redis: aioredis.Redis,
) -> None:
    """A delivered delivery is only a record: with its payment id, and its snapshot still held
    by another subscriber's pending delivery, a resend makes it a pending delivery again (same
    webhook-id, its record gone from the state hash, a snapshot reference taken), its line's
    head with a job of a fresh generation; the job id is returned."""
    now = await delivered_while_other_pending(redis, ["pending"])
    assert await redis.hexists(state_key(PID), f"{SUB}:1")  # type: ignore[misc]
    result, job_id = await admin(redis).resend(SUB, T1, now + 1, payment_id=PID)
    assert (result, job_id) == ("ok", deliver_job_id(SUB, T1, now + 2))
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **line(OTHER_SUB, [T1]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(OTHER_SUB, T1, 1),
            **job_entry(SUB, T1, now + 2),
        },
    )
    fields = await hash_of(redis, delivery_key(SUB, T1))
    assert (fields["state"], fields["attempts"], fields["replays"], fields["tid"]) == (
        "active",
        "0",
        "1",
        T1,
    )
    assert not await redis.hexists(state_key(PID), f"{SUB}:1")  # type: ignore[misc]
    assert await redis.hget(snapshot_key(T1), "refs") == b"2"  # type: ignore[misc]


async def test_resend_of_a_finished_delivery_without_its_payment_is_missing(
    redis: aioredis.Redis,
) -> None:
    """Without the payment id a finished delivery (no hash) cannot be found: 'missing', and
    nothing is written."""
    now = await delivered_while_other_pending(redis, ["pending"])
    before = await redis.hgetall(state_key(PID))  # type: ignore[misc]
    assert await admin(redis).resend(SUB, T1, now + 1) == ("missing", "")
    assert await redis.hgetall(state_key(PID)) == before  # type: ignore[misc]
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(OTHER_SUB, [T1]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(OTHER_SUB, T1, 1),
        },
    )


async def test_resend_behind_an_active_head_returns_no_job(redis: aioredis.Redis) -> None:
    """A delivered delivery resent while its line has an active head waits in line: 'ok'
    without a job id, no job of its own."""
    now = await delivered_while_other_pending(redis, ["pending", "submitted"])
    assert await admin(redis).resend(SUB, T1, now + 1, payment_id=PID) == ("ok", "")
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2]),
            **line(OTHER_SUB, [T1, T2]),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
            **job_entry(OTHER_SUB, T1, 1),
        },
    )
    assert await zset(redis, order_key(SUB, PID)) == {T1: 1, T2: 2}
    assert await redis.get(head_key(SUB, PID)) == T2.encode()


async def test_resend_of_a_pending_delivery_is_refused(redis: aioredis.Redis) -> None:
    """A resend of a delivery still active answers 'not_dead' and writes nothing."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    assert await admin(redis).resend(SUB, T1, now, payment_id=PID) == ("not_dead", "")
    await assert_keyspace(
        redis,
        {**payment_keys(), **line(SUB, [T1]), QUEUE: ("zset", NO_TTL), **job_entry(SUB, T1, 1)},
    )


async def test_resend_without_a_body_is_no_body(redis: aioredis.Redis) -> None:
    """A delivered delivery whose snapshot went with its last reference answers 'no_body'
    (410 body_expired) and keeps its record."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    await acquire(redis, T1, 1, now)
    await finish(redis, T1, 1, now, "ok")
    assert await admin(redis).resend(SUB, T1, now + 1, payment_id=PID) == ("no_body", "")
    await assert_keyspace(redis, {**payment_keys(), breaker_key(SUB): ("hash", NO_TTL)})
    assert await redis.hexists(state_key(PID), f"{SUB}:1")  # type: ignore[misc]


async def test_resend_of_a_dead_letter_without_its_snapshot_is_no_body(
    redis: aioredis.Redis,
) -> None:
    """A dead letter whose snapshot is gone answers 'no_body' and stays a dead letter."""
    died = await dead_letter(redis, ["pending"])
    await redis.delete(snapshot_key(T1))
    assert await admin(redis).resend(SUB, T1, died + 1) == ("no_body", "")
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            delivery_key(SUB, T1): ("hash", ttl_s(OPERATOR_TTL_S)),
            breaker_key(SUB): ("hash", NO_TTL),
            **DEAD_SETS,
        },
    )
