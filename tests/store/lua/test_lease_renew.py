"""The heartbeat's renewal, run through ``Leases.renew``: a worker's arq in-progress keys, fetch
locks and delivery slots (with probe and safety-net job) are renewed in one script call while
live; a lease found lapsed or taken is reported lost and left as it is."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.layout import arq_in_progress_key, breaker_key, inflight_key
from service.store.layout import payment_lock_key as _lock_key
from service.store.leases import Leases
from tests.store.lua.keyspace import NO_TTL, assert_keyspace, hash_of, server_ms, ttl_ms, zset
from tests.store.lua.staging import PID, QUEUE, SUB

LEASE_MS = 5_000
LEASE_TTL = ttl_ms(LEASE_MS, slack_ms=2_000)
JOB = "fdl:ledger:t1:1"
OTHER = "fdl:ledger:t2:1"


def leases(redis: aioredis.Redis) -> Leases:
    return Leases(redis, QUEUE, LEASE_MS)


async def test_in_progress_keys_of_running_jobs_are_renewed(redis: aioredis.Redis) -> None:
    """Each running job's in-progress key gets the lease as TTL; a missing one is not made."""
    await redis.set(arq_in_progress_key("evt:a"), b"1", px=500)
    renewed = await leases(redis).renew(["evt:a", "evt:gone"], await server_ms(redis))
    assert renewed.jobs == 1 and renewed.lost == ()
    await assert_keyspace(redis, {arq_in_progress_key("evt:a"): ("string", LEASE_TTL)})


async def test_held_fetch_lock_is_renewed(redis: aioredis.Redis) -> None:
    """A fetch lock still holding the run's token gets the lease as TTL again."""
    await redis.set(_lock_key(PID), b"tok-a", px=500)
    keeper = leases(redis)
    lock = keeper.hold_lock(PID, "tok-a")
    renewed = await keeper.renew([], await server_ms(redis))
    assert renewed.lost == () and not lock.lost and keeper.held() == [lock]
    await assert_keyspace(redis, {_lock_key(PID): ("string", LEASE_TTL)})


async def test_fetch_lock_taken_by_another_run_is_lost(redis: aioredis.Redis) -> None:
    """A lock that lapsed and was taken by another run is reported lost, left untouched."""
    await redis.set(_lock_key(PID), b"tok-b", px=60_000)
    keeper = leases(redis)
    lock = keeper.hold_lock(PID, "tok-a")
    renewed = await keeper.renew([], await server_ms(redis))
    assert renewed.lost == (lock,) and lock.lost and keeper.held() == []
    await assert_keyspace(redis, {_lock_key(PID): ("string", ttl_ms(60_000, 5_000))})
    assert await redis.get(_lock_key(PID)) == b"tok-b"


async def test_fetch_lock_that_lapsed_is_lost_and_not_taken_again(redis: aioredis.Redis) -> None:
    """A lock gone with its TTL is reported lost and not written back."""
    keeper = leases(redis)
    lock = keeper.hold_lock(PID, "tok-a")
    renewed = await keeper.renew([], await server_ms(redis))
    assert renewed.lost == (lock,)
    await assert_keyspace(redis, {})


async def test_live_slot_probe_and_safety_job_are_renewed(redis: aioredis.Redis) -> None:
    """A live slot, its breaker probe and its deferred safety-net job move to now + lease; a
    job already due (arq runs it) and another attempt's slot are left alone."""
    now = await server_ms(redis)
    await redis.zadd(inflight_key(SUB), {JOB: now + 1_000, OTHER: now + 2_000})
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB), mapping={"open_until": now - 10, "probe": JOB, "probe_until": now + 1_000}
    )
    await redis.zadd(QUEUE, {JOB: now + 1_000, OTHER: now - 50})
    keeper = leases(redis)
    slot = keeper.hold_slot(SUB, JOB)
    keeper.hold_slot(SUB, OTHER)
    renewed = await keeper.renew([], now)
    assert renewed.lost == () and not slot.lost
    await assert_keyspace(
        redis,
        {
            inflight_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
        },
    )
    assert await zset(redis, inflight_key(SUB)) == {JOB: now + LEASE_MS, OTHER: now + LEASE_MS}
    assert await hash_of(redis, breaker_key(SUB)) == {
        "open_until": str(now - 10),
        "probe": JOB,
        "probe_until": str(now + LEASE_MS),
    }
    assert await zset(redis, QUEUE) == {JOB: now + LEASE_MS, OTHER: now - 50}


async def test_lapsed_slot_is_lost_and_not_revived(redis: aioredis.Redis) -> None:
    """A slot whose lease end passed (another attempt may hold the room) is reported lost: its
    score, probe and job stay as they were; a slot gone altogether is lost too."""
    now = await server_ms(redis)
    await redis.zadd(inflight_key(SUB), {JOB: now - 1})
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB), mapping={"open_until": now - 10, "probe": JOB, "probe_until": now - 1}
    )
    await redis.zadd(QUEUE, {JOB: now - 1})
    keeper = leases(redis)
    lapsed = keeper.hold_slot(SUB, JOB)
    gone = keeper.hold_slot(SUB, OTHER)
    renewed = await keeper.renew([], now)
    assert set(renewed.lost) == {lapsed, gone} and lapsed.lost and gone.lost
    assert keeper.held() == []
    await assert_keyspace(
        redis,
        {
            inflight_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
            QUEUE: ("zset", NO_TTL),
        },
    )
    assert await zset(redis, inflight_key(SUB)) == {JOB: now - 1}
    assert (await hash_of(redis, breaker_key(SUB)))["probe_until"] == str(now - 1)
    assert await zset(redis, QUEUE) == {JOB: now - 1}


async def test_dropped_leases_are_renewed_no_more(redis: aioredis.Redis) -> None:
    """After ``drop`` a lease is not renewed: its lock keeps the TTL it had."""
    await redis.set(_lock_key(PID), b"tok-a", px=500)
    keeper = leases(redis)
    keeper.drop(keeper.hold_lock(PID, "tok-a"))
    renewed = await keeper.renew([], await server_ms(redis))
    assert renewed == type(renewed)(0)
    await assert_keyspace(redis, {_lock_key(PID): ("string", ttl_ms(500, 500))})
