"""Giving the lock up after a failed fetch, run through ``PaymentStateStore.release_for_retry``:
the payment stays marked as needing a fetch, and only the holder's lock is dropped."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.layout import payment_dirty_key as _dirty_key
from service.store.layout import payment_lock_key as _lock_key
from tests.store.lua.keyspace import assert_keyspace, ttl_ms, ttl_s
from tests.store.lua.staging import DIRTY_TTL_S, LOCK_TTL_MS, PID, payment_store

DIRTY_TTL = ttl_s(DIRTY_TTL_S)
LOCK_TTL = ttl_ms(LOCK_TTL_MS)


async def test_holder_releases_and_marks_dirty(redis: aioredis.Redis) -> None:
    """The holder's release drops the lock and leaves the dirty mark for the retry."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.release_for_retry(PID, "tok-a")
    await assert_keyspace(redis, {_dirty_key(PID): ("string", DIRTY_TTL)})
    assert await redis.get(_dirty_key(PID)) == b"1"


async def test_other_token_does_not_drop_the_lock(redis: aioredis.Redis) -> None:
    """A job that does not hold the lock cannot drop it; it only marks the payment dirty."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.release_for_retry(PID, "tok-b")
    await assert_keyspace(
        redis, {_lock_key(PID): ("string", LOCK_TTL), _dirty_key(PID): ("string", DIRTY_TTL)}
    )
    assert await redis.get(_lock_key(PID)) == b"tok-a"


async def test_release_without_a_lock_only_marks_dirty(redis: aioredis.Redis) -> None:
    """Releasing a lock that expired already leaves just the dirty mark."""
    await payment_store(redis).release_for_retry(PID, "tok-a")
    await assert_keyspace(redis, {_dirty_key(PID): ("string", DIRTY_TTL)})


async def test_release_renews_the_dirty_mark(redis: aioredis.Redis) -> None:
    """An existing dirty mark gets its full TTL back."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.acquire(PID, "tok-b")  # marks dirty
    await redis.pexpire(_dirty_key(PID), 1_000)
    await store.release_for_retry(PID, "tok-a")
    await assert_keyspace(redis, {_dirty_key(PID): ("string", DIRTY_TTL)})


async def test_released_lock_is_taken_by_the_retry(redis: aioredis.Redis) -> None:
    """After a release the retry takes the lock, which drops the dirty mark."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-a")
    await store.release_for_retry(PID, "tok-a")
    assert await store.acquire(PID, "tok-retry") is True
    await assert_keyspace(redis, {_lock_key(PID): ("string", LOCK_TTL)})
    assert await redis.get(_lock_key(PID)) == b"tok-retry"
