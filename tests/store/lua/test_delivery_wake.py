"""Waking parked deliveries, run through ``DeliveryAdmin.wake``: the breaker is reset and up to
``count`` parked deliveries, longest-parked first, get a fresh job due now."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.deliveries import breaker_key, delivery_key, waiting_key
from service.store.layout import deliver_job_id, wake_job_id
from tests.store.lua.keyspace import NO_TTL, Expected, assert_keyspace, hash_of, server_ms, zset
from tests.store.lua.staging import (
    LEASE_MS,
    QUEUE,
    SUB,
    acquire,
    admin,
    job_entry,
    line,
    payment_keys,
    record,
    tid,
    wake_entry,
)

PIDS = ["pay_1", "pay_2", "pay_3"]


def head(pid: str) -> str:
    return tid(pid, "pending")


async def park(redis: aioredis.Redis, pid: str, now: int, enabled: bool = True) -> Expected:
    """Record a one-delivery line for ``pid`` and park its head at ``now`` (cap reached, or
    disabled); the keys of that line, and of the recheck wake job a park over the cap queues
    (for ``now`` = the first park's time). The head's first job stays, as the arq job that ran
    the acquire would until arq removed it."""
    await record(redis, pid, ["pending"])
    verdict = (await acquire(redis, head(pid), 1, now, cap=0, enabled=enabled)).verdict
    assert verdict == ("cap" if enabled else "disabled")
    keys = {**payment_keys(pid), **line(SUB, [head(pid)], pid), **job_entry(SUB, head(pid), 1)}
    if enabled:
        keys.update(wake_entry(SUB, now + LEASE_MS, LEASE_MS))
    return keys


async def test_wake_with_nothing_parked_resets_the_breaker(redis: aioredis.Redis) -> None:
    """With nothing parked, wake deletes the breaker and wakes none."""
    await redis.hset(breaker_key(SUB), mapping={"fails": 9, "open_until": 123})  # type: ignore[misc]
    assert await admin(redis).wake(SUB, 10, 1_000) == 0
    await assert_keyspace(redis, {})


async def test_wake_starts_the_longest_parked_up_to_count(redis: aioredis.Redis) -> None:
    """Wake gives the count longest-parked deliveries a fresh job due now; the rest wait."""
    now = await server_ms(redis)
    staged: Expected = {}
    for n, pid in enumerate(PIDS):
        staged.update(await park(redis, pid, now + n))
        if n:  # the first park's recheck is pending: the others queue none
            del staged[next(iter(wake_entry(SUB, now + n + LEASE_MS, 0)))]
    await redis.hset(breaker_key(SUB), mapping={"fails": 9, "open_until": now + 60_000})  # type: ignore[misc]
    woke_at = now + 10
    assert await admin(redis).wake(SUB, 2, woke_at) == 2
    for pid in PIDS[:2]:
        staged.update(job_entry(SUB, head(pid), 3))
    await assert_keyspace(
        redis,
        {
            **staged,
            QUEUE: ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    # The breaker is reset; the pending recheck stays for the one still parked.
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(now + LEASE_MS)}
    queue = await zset(redis, QUEUE)
    assert {job: at for job, at in queue.items() if job.endswith(":3")} == {
        deliver_job_id(SUB, head("pay_1"), 3): woke_at,
        deliver_job_id(SUB, head("pay_2"), 3): woke_at,
    }
    assert deliver_job_id(SUB, head("pay_3"), 2) not in queue
    assert await zset(redis, waiting_key(SUB)) == {head("pay_3"): now + 2}
    assert (await hash_of(redis, delivery_key(SUB, head("pay_1"))))["gen"] == "3"


async def test_wake_skips_entries_no_longer_active(redis: aioredis.Redis) -> None:
    """Waiting entries whose delivery is gone are dropped without a job and not counted."""
    now = await server_ms(redis)
    staged = await park(redis, "pay_1", now)
    await redis.zadd(waiting_key(SUB), {"msg_gone": now - 1})
    assert await admin(redis).wake(SUB, 5, now + 10) == 1
    # Nothing parked any more: the recheck its parking queued is cancelled with the breaker.
    del staged[next(iter(wake_entry(SUB, now + LEASE_MS, 0)))]
    await assert_keyspace(
        redis, {**staged, **job_entry(SUB, head("pay_1"), 3), QUEUE: ("zset", NO_TTL)}
    )


async def test_wake_of_zero_only_resets_the_breaker(redis: aioredis.Redis) -> None:
    """A count of zero wakes none and keeps the waiting set, but resets the breaker."""
    now = await server_ms(redis)
    staged = await park(redis, "pay_1", now)
    await redis.hset(breaker_key(SUB), mapping={"fails": 9})  # type: ignore[misc]
    assert await admin(redis).wake(SUB, 0, now + 10) == 0
    await assert_keyspace(
        redis,
        {
            **staged,
            QUEUE: ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(now + LEASE_MS)}
    assert await zset(redis, waiting_key(SUB)) == {head("pay_1"): now}


async def test_wake_cancels_the_open_breakers_pending_wake_job(redis: aioredis.Redis) -> None:
    """Waking a subscriber whose breaker is open resets it and takes that cycle's wake job off
    the queue; the parked delivery gets its job due now."""
    now = await server_ms(redis)
    await record(redis, "pay_1", ["pending"])
    open_until = now + 60_000
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    assert (await acquire(redis, head("pay_1"), 1, now)).verdict == "open"
    assert wake_job_id(SUB, open_until) in await zset(redis, QUEUE)
    assert await admin(redis).wake(SUB, 4, now + 10) == 1
    await assert_keyspace(
        redis,
        {
            **payment_keys("pay_1"),
            **line(SUB, [head("pay_1")], "pay_1"),
            **job_entry(SUB, head("pay_1"), 1),
            **job_entry(SUB, head("pay_1"), 3),
            QUEUE: ("zset", NO_TTL),
        },
    )
    assert wake_job_id(SUB, open_until) not in await zset(redis, QUEUE)


async def test_wake_gives_a_delivery_parked_while_disabled_its_job(
    redis: aioredis.Redis,
) -> None:
    """A delivery parked while its subscriber was disabled (no job) gets a job due now."""
    now = await server_ms(redis)
    staged = await park(redis, "pay_1", now, enabled=False)
    assert await admin(redis).wake(SUB, 1, now + 10) == 1
    await assert_keyspace(
        redis, {**staged, **job_entry(SUB, head("pay_1"), 3), QUEUE: ("zset", NO_TTL)}
    )
    assert (await zset(redis, QUEUE))[deliver_job_id(SUB, head("pay_1"), 3)] == now + 10
