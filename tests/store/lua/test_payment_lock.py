"""The fetch lock, run through ``PaymentStateStore.acquire``: the payment is marked as needing a
fetch, and the caller takes the lock unless another job holds it."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.layout import payment_dirty_key as _dirty_key
from service.store.layout import payment_lock_key as _lock_key
from service.store.payments import state_key
from tests.store.lua.keyspace import assert_keyspace, ttl_ms, ttl_s
from tests.store.lua.staging import (
    DIRTY_TTL_S,
    LOCK_TTL_MS,
    PID,
    payment_keys,
    payment_store,
    record,
)

DIRTY_TTL = ttl_s(DIRTY_TTL_S)
LOCK_TTL = ttl_ms(LOCK_TTL_MS)


async def test_free_lock_is_taken_and_leaves_no_dirty_mark(redis: aioredis.Redis) -> None:
    """With nobody fetching, acquire takes the lock (token, lock TTL) and drops the dirty mark."""
    assert await payment_store(redis).acquire(PID, "tok-a") is True
    await assert_keyspace(redis, {_lock_key(PID): ("string", LOCK_TTL)})
    assert await redis.get(_lock_key(PID)) == b"tok-a"


async def test_held_lock_is_refused_and_leaves_the_dirty_mark(redis: aioredis.Redis) -> None:
    """While another job holds the lock, acquire fails and leaves the payment marked dirty."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    assert await store.acquire(PID, "tok-b") is False
    await assert_keyspace(
        redis, {_lock_key(PID): ("string", LOCK_TTL), _dirty_key(PID): ("string", DIRTY_TTL)}
    )
    assert await redis.get(_lock_key(PID)) == b"tok-a"
    assert await redis.get(_dirty_key(PID)) == b"1"


async def test_holder_takes_its_own_lock_again(redis: aioredis.Redis) -> None:
    """The holder's own token takes the lock again: its TTL is renewed, the dirty mark dropped."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.acquire(PID, "tok-b")  # leaves the dirty mark
    await redis.pexpire(_lock_key(PID), 1_000)
    assert await store.acquire(PID, "tok-a") is True
    await assert_keyspace(redis, {_lock_key(PID): ("string", LOCK_TTL)})
    assert await redis.get(_lock_key(PID)) == b"tok-a"


async def test_lock_freed_by_expiry_is_taken_by_the_next_job(redis: aioredis.Redis) -> None:
    """After the holder's lock expired, the next job takes it and the dirty mark is dropped."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.acquire(PID, "tok-b")
    await redis.delete(_lock_key(PID))  # as its TTL would
    assert await store.acquire(PID, "tok-b") is True
    await assert_keyspace(redis, {_lock_key(PID): ("string", LOCK_TTL)})
    assert await redis.get(_lock_key(PID)) == b"tok-b"


async def test_acquire_leaves_the_recorded_state_alone(redis: aioredis.Redis) -> None:
    """Taking the lock touches neither the recorded state nor its deliveries' keys."""
    await record(redis, PID, ["pending"], subscribers=())
    state = await redis.hgetall(state_key(PID))  # type: ignore[misc]
    assert await payment_store(redis).acquire(PID, "tok-a") is True
    await assert_keyspace(redis, {**payment_keys(PID), _lock_key(PID): ("string", LOCK_TTL)})
    assert await redis.hgetall(state_key(PID)) == state  # type: ignore[misc]


async def test_locks_of_two_payments_are_independent(redis: aioredis.Redis) -> None:
    """Each payment has its own lock: holding one does not refuse the other."""
    store = payment_store(redis)
    assert await store.acquire(PID, "tok-a") is True
    assert await store.acquire("pay_2", "tok-b") is True
    await assert_keyspace(
        redis, {_lock_key(PID): ("string", LOCK_TTL), _lock_key("pay_2"): ("string", LOCK_TTL)}
    )
