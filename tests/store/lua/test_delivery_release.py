"""A subscriber's wake job, run through ``FanoutStore.release``: at the end of a breaker
cool-down the longest-parked delivery is acquired as the half-open probe; behind a live probe,
or while open, nothing more is queued; with the breaker closed, parked deliveries get jobs as
slots allow, and a recheck stays queued while some remain parked."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from service.store.deliveries import breaker_key, waiting_key
from service.store.delivery_state import Acquired, Released
from service.store.layout import deliver_job_id, inflight_key, wake_job_id
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY
from tests.store.lua.keyspace import (
    NO_TTL,
    Expected,
    assert_keyspace,
    hash_of,
    server_ms,
    zset,
)
from tests.store.lua.staging import (
    LEASE_MS,
    QUEUE,
    RECEIVED_MS,
    SUB,
    acquire,
    body_of,
    fanout,
    job_entry,
    line,
    payment_keys,
    record,
    tid,
    wake_entry,
)

PIDS = ["pay_1", "pay_2", "pay_3"]
COOLDOWN_MS = 60_000
HOLD_MS = 30_000
RECHECK_MS = 20_000


def head(pid: str) -> str:
    return tid(pid, "pending")


async def release(redis: aioredis.Redis, now: int, **kwargs: Any) -> Released:
    """Run the wake job's step at ``now`` as ``workers.delivery.runner.wake`` does."""
    options: dict[str, Any] = {
        "subscriber_id": SUB,
        "enabled": True,
        "cap": 2,
        "lease_ms": LEASE_MS,
        "hold_ms": HOLD_MS,
        "recheck_ms": RECHECK_MS,
        "open_jitter_ms": 0,
        "now_ms": now,
        "subscribers_version": "0",
    }
    options.update(kwargs)
    return await fanout(redis).release(**options)


async def park_behind(redis: aioredis.Redis, now: int, open_until: int) -> Expected:
    """Open the breaker until ``open_until`` and park the head of each of PIDS behind it, one
    ms apart from ``now``; the keys (each line, its spent first job, the cycle's one wake job,
    the breaker and the waiting set)."""
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    keys: Expected = {}
    for n, pid in enumerate(PIDS):
        await record(redis, pid, ["pending"])
        assert (await acquire(redis, head(pid), 1, now + n)).verdict == "open"
        keys.update(payment_keys(pid))
        keys.update(line(SUB, [head(pid)], pid))
        keys.update(job_entry(SUB, head(pid), 1))
    return {
        **keys,
        **wake_entry(SUB, open_until, open_until - now),
        QUEUE: ("zset", NO_TTL),
        breaker_key(SUB): ("hash", NO_TTL),
        waiting_key(SUB): ("zset", NO_TTL),
    }


@pytest.fixture
async def now(redis: aioredis.Redis) -> int:
    return await server_ms(redis)


async def test_stale_subscriber_list_answers_reload(redis: aioredis.Redis, now: int) -> None:
    """A caller with a stale registry version gets 'reload' and nothing is written."""
    staged = await park_behind(redis, now, now + COOLDOWN_MS)
    await redis.set(SUBSCRIBERS_VERSION_KEY, "3")
    got = await release(redis, now + COOLDOWN_MS, subscribers_version="2")
    assert got == Released("reload", 0)
    await assert_keyspace(redis, {**staged, SUBSCRIBERS_VERSION_KEY: ("string", NO_TTL)})
    assert len(await zset(redis, waiting_key(SUB))) == 3


async def test_disabled_subscriber_releases_nothing(redis: aioredis.Redis, now: int) -> None:
    """A disabled subscriber's wake job does nothing: its parked deliveries wait for enable."""
    staged = await park_behind(redis, now, now + COOLDOWN_MS)
    await redis.zadd(inflight_key(SUB), {"fdl:ledger:dead:1": now - 1})
    got = await release(redis, now + COOLDOWN_MS, enabled=False)
    assert got == Released("disabled", 0)
    await assert_keyspace(redis, {**staged, inflight_key(SUB): ("zset", NO_TTL)})


async def test_still_open_ensures_the_cycles_wake_job_only(redis: aioredis.Redis, now: int) -> None:
    """Breaker still open: nothing is released; the cycle's wake job, lost here, is queued again
    at open_until plus jitter (one job, its id by open_until); lapsed slots are freed."""
    open_until = now + COOLDOWN_MS
    staged = await park_behind(redis, now, open_until)
    await redis.zrem(QUEUE, wake_job_id(SUB, open_until))
    await redis.zadd(inflight_key(SUB), {"fdl:ledger:dead:1": now - 1})
    got = await release(redis, now, open_jitter_ms=400)
    assert got == Released("open", open_until)
    await assert_keyspace(redis, {**staged, **wake_entry(SUB, open_until, COOLDOWN_MS + 400)})
    assert (await zset(redis, QUEUE))[wake_job_id(SUB, open_until)] == open_until + 400
    # Queued already: a second run changes nothing.
    assert (await release(redis, now + 1, open_jitter_ms=900)).verdict == "open"
    assert (await zset(redis, QUEUE))[wake_job_id(SUB, open_until)] == open_until + 400
    assert len(await zset(redis, waiting_key(SUB))) == 3


async def test_end_of_cool_down_sends_the_longest_parked_as_the_probe(
    redis: aioredis.Redis, now: int
) -> None:
    """Half-open, nobody probing: the longest-parked delivery is taken off the waiting set, its
    fresh job deferred by the hold, its slot and the probe held for a lease, and handed to the
    caller to send; the others stay parked with no job."""
    open_until = now + COOLDOWN_MS
    staged = await park_behind(redis, now, open_until)
    at = open_until + 5
    got = await release(redis, at)
    probe_job = deliver_job_id(SUB, head("pay_1"), 3)
    assert got == Released(
        "probe",
        0,
        Acquired(
            "probe", 0, body_of("pay_1", "pending"), 0, probe_job, "pay_1", "payment.pending",
            RECEIVED_MS,
        ),
    )  # fmt: skip
    await assert_keyspace(
        redis,
        {
            **staged,
            **job_entry(SUB, head("pay_1"), 3, HOLD_MS),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert queue[probe_job] == at + HOLD_MS
    assert [job for job in queue if job.startswith("fdl:") and not job.endswith(":1")] == [
        probe_job
    ]
    assert await zset(redis, inflight_key(SUB)) == {probe_job: at + LEASE_MS}
    assert await zset(redis, waiting_key(SUB)) == {head("pay_2"): now + 1, head("pay_3"): now + 2}
    breaker = await hash_of(redis, breaker_key(SUB))
    assert (breaker["probe"], breaker["probe_until"]) == (probe_job, str(at + LEASE_MS))


async def test_live_probe_in_flight_releases_nothing(redis: aioredis.Redis, now: int) -> None:
    """Half-open with a live probe: 'probing' with its lease end, nothing queued or popped."""
    open_until = now + COOLDOWN_MS
    staged = await park_behind(redis, now, open_until)
    probe = "fdl:ledger:other:1"
    at = open_until + 10
    await redis.hset(breaker_key(SUB), mapping={"probe": probe, "probe_until": at + 1_000})  # type: ignore[misc]
    await redis.zadd(inflight_key(SUB), {probe: at + 1_000})
    got = await release(redis, at)
    assert got == Released("probing", at + 1_000)
    await assert_keyspace(redis, {**staged, inflight_key(SUB): ("zset", NO_TTL)})
    assert len(await zset(redis, waiting_key(SUB))) == 3


async def test_probe_whose_lease_lapsed_is_taken_over(redis: aioredis.Redis, now: int) -> None:
    """Half-open with a probe whose lease lapsed (its sender died): its slot is freed and the
    longest-parked delivery becomes the probe."""
    open_until = now + COOLDOWN_MS
    staged = await park_behind(redis, now, open_until)
    dead = "fdl:ledger:other:1"
    at = open_until + 10
    await redis.hset(breaker_key(SUB), mapping={"probe": dead, "probe_until": at - 1})  # type: ignore[misc]
    await redis.zadd(inflight_key(SUB), {dead: at - 1})
    got = await release(redis, at)
    probe_job = deliver_job_id(SUB, head("pay_1"), 3)
    assert got.verdict == "probe" and got.probe is not None and got.probe.job_id == probe_job
    await assert_keyspace(
        redis,
        {
            **staged,
            **job_entry(SUB, head("pay_1"), 3, HOLD_MS),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert await zset(redis, inflight_key(SUB)) == {probe_job: at + LEASE_MS}
    assert (await hash_of(redis, breaker_key(SUB)))["probe"] == probe_job


async def test_half_open_with_nothing_parked_is_idle(redis: aioredis.Redis, now: int) -> None:
    """Half-open with nothing parked (only entries no longer active): 'idle', those entries
    dropped, nothing queued; the next delivery to come becomes the probe in acquire."""
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": now - 1})  # type: ignore[misc]
    await redis.zadd(waiting_key(SUB), {"msg_gone": now - 5})
    got = await release(redis, now)
    assert got == Released("idle", 0)
    await assert_keyspace(redis, {breaker_key(SUB): ("hash", NO_TTL)})
    assert await hash_of(redis, breaker_key(SUB)) == {"fails": "5", "open_until": str(now - 1)}


async def test_closed_breaker_releases_as_many_as_free_slots_and_rechecks(
    redis: aioredis.Redis, now: int
) -> None:
    """Closed: the longest-parked deliveries get jobs due now, as many as the free slots (lapsed
    ones freed first); one recheck is queued for those still parked."""
    staged = await park_behind(redis, now, now + COOLDOWN_MS)
    await redis.hset(breaker_key(SUB), mapping={"fails": 0, "open_until": 0, "probe": ""})  # type: ignore[misc]
    live = "fdl:ledger:live:1"
    at = now + 100
    await redis.zadd(inflight_key(SUB), {live: at + 5_000, "fdl:ledger:dead:1": at - 1})
    got = await release(redis, at, cap=2)
    assert got == Released("released", 1)
    await assert_keyspace(
        redis,
        {
            **staged,
            **job_entry(SUB, head("pay_1"), 3),
            **wake_entry(SUB, at + RECHECK_MS, RECHECK_MS),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert queue[deliver_job_id(SUB, head("pay_1"), 3)] == at
    assert queue[wake_job_id(SUB, at + RECHECK_MS)] == at + RECHECK_MS
    assert await zset(redis, waiting_key(SUB)) == {head("pay_2"): now + 1, head("pay_3"): now + 2}
    # The woken job holds the free slot for a lease until it runs.
    assert await zset(redis, inflight_key(SUB)) == {
        live: at + 5_000,
        deliver_job_id(SUB, head("pay_1"), 3): at + LEASE_MS,
    }
    assert (await hash_of(redis, breaker_key(SUB)))["recheck_at"] == str(at + RECHECK_MS)


async def test_closed_breaker_releasing_every_parked_one_cancels_the_recheck(
    redis: aioredis.Redis, now: int
) -> None:
    """Closed with room for every parked delivery: all get jobs, and the pending recheck (queued
    by one parked over the cap) leaves the queue."""
    staged = await park_behind(redis, now, now + COOLDOWN_MS)
    await redis.hset(breaker_key(SUB), mapping={"fails": 0, "open_until": 0, "probe": ""})  # type: ignore[misc]
    await record(redis, "pay_4", ["pending"])
    assert (await acquire(redis, head("pay_4"), 1, now + 50, cap=0)).verdict == "cap"
    assert wake_job_id(SUB, now + 50 + LEASE_MS) in await zset(redis, QUEUE)
    at = now + 100
    got = await release(redis, at, cap=5)
    assert got == Released("released", 4)
    del staged[waiting_key(SUB)]
    staged.update({**payment_keys("pay_4"), **line(SUB, [head("pay_4")], "pay_4")})
    staged.update(job_entry(SUB, head("pay_4"), 1))
    for pid in [*PIDS, "pay_4"]:
        staged.update(job_entry(SUB, head(pid), 3))
    await assert_keyspace(redis, {**staged, inflight_key(SUB): ("zset", NO_TTL)})
    assert len(await zset(redis, inflight_key(SUB))) == 4
    assert "recheck_at" not in await hash_of(redis, breaker_key(SUB))
    assert wake_job_id(SUB, now + 50 + LEASE_MS) not in await zset(redis, QUEUE)
