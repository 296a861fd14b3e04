"""The delivery attempt's acquire, run through ``FanoutStore.acquire``: the attempt starts (ok,
probe) or the delivery is parked (cap, open, probing, disabled) with no job of its own: the
subscriber's one wake job (a breaker cycle's, or a recheck) brings it back; a stale job or a
stale subscriber list changes nothing."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.store.deliveries import breaker_key, delivery_key, waiting_key
from service.store.delivery_state import Acquired
from service.store.layout import deliver_job_id, inflight_key, wake_job_id
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY
from tests.store.lua.keyspace import (
    NO_TTL,
    Expected,
    assert_keyspace,
    hash_of,
    job_body,
    server_ms,
    zset,
)
from tests.store.lua.staging import (
    LEASE_MS,
    PID,
    QUEUE,
    RECEIVED_MS,
    SUB,
    acquire,
    body_of,
    job_entry,
    job_key,
    line,
    payment_keys,
    record,
    tid,
    wake_entry,
)

T1, T2 = tid(PID, "pending"), tid(PID, "submitted")
PID2 = "pay_2"
P2 = tid(PID2, "pending")
JOB1 = deliver_job_id(SUB, T1, 1)
HOUR_MS = 3_600_000

STAGED: Expected = {
    **payment_keys(),
    **line(SUB, [T1, T2]),
    QUEUE: ("zset", NO_TTL),
    **job_entry(SUB, T1, 1),
}
"""The line staged for every test: T1 active (gen 1, its job queued), T2 queued behind it."""


@pytest.fixture
async def now(redis: aioredis.Redis) -> int:
    """Stage the line, and return the time the attempts are made at."""
    await record(redis, PID, ["pending", "submitted"])
    return await server_ms(redis)


async def test_stale_subscriber_list_answers_reload(redis: aioredis.Redis, now: int) -> None:
    """A caller with a stale registry version gets 'reload' and nothing is written."""
    await redis.set(SUBSCRIBERS_VERSION_KEY, "2")
    got = await acquire(redis, T1, 1, now, version="1")
    assert (got.verdict, got.until_ms, got.may_send) == ("reload", 0, False)
    await assert_keyspace(redis, {**STAGED, SUBSCRIBERS_VERSION_KEY: ("string", NO_TTL)})
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "1"


async def test_job_of_an_old_generation_is_stale(redis: aioredis.Redis, now: int) -> None:
    """A job of an old gen is stale: nothing is written, not even expired leases purged."""
    await redis.zadd(inflight_key(SUB), {"fdl:ledger:old:1": now - 1})
    got = await acquire(redis, T1, 0, now)
    assert (got.verdict, got.until_ms) == ("stale", 0)
    await assert_keyspace(redis, {**STAGED, inflight_key(SUB): ("zset", NO_TTL)})
    assert await zset(redis, inflight_key(SUB)) == {"fdl:ledger:old:1": now - 1}


async def test_delivery_not_active_is_stale(redis: aioredis.Redis, now: int) -> None:
    """A job for a delivery still queued behind its head is stale."""
    got = await acquire(redis, T2, 0, now)
    assert got.verdict == "stale"
    await assert_keyspace(redis, STAGED)


async def test_missing_delivery_is_stale(redis: aioredis.Redis, now: int) -> None:
    """A job for a delivery that does not exist is stale and creates no key."""
    got = await acquire(redis, "msg_missing", 1, now)
    assert got.verdict == "stale"
    await assert_keyspace(redis, STAGED)


async def test_disabled_check_comes_after_the_stale_check(redis: aioredis.Redis, now: int) -> None:
    """A stale job of a disabled subscriber parks nothing."""
    got = await acquire(redis, T1, 0, now, enabled=False)
    assert got.verdict == "stale"
    await assert_keyspace(redis, STAGED)


async def test_free_slot_starts_the_attempt(redis: aioredis.Redis, now: int) -> None:
    """Under the cap, breaker closed: the attempt starts, leases a slot, gets what it sends."""
    got = await acquire(redis, T1, 1, now, cap=1)
    assert got == Acquired(
        "ok", 0, body_of(PID, "pending"), 0, JOB1, PID, "payment.pending", RECEIVED_MS
    )
    await assert_keyspace(redis, {**STAGED, inflight_key(SUB): ("zset", NO_TTL)})
    assert await zset(redis, inflight_key(SUB)) == {JOB1: now + LEASE_MS}


async def test_job_already_in_flight_starts_again_with_a_new_lease(
    redis: aioredis.Redis, now: int
) -> None:
    """A job already holding a slot starts again even at the cap, with a renewed lease."""
    await acquire(redis, T1, 1, now, cap=1)
    got = await acquire(redis, T1, 1, now + 1_000, cap=1)
    assert got.verdict == "ok"
    await assert_keyspace(redis, {**STAGED, inflight_key(SUB): ("zset", NO_TTL)})
    assert await zset(redis, inflight_key(SUB)) == {JOB1: now + 1_000 + LEASE_MS}


async def test_expired_leases_free_their_slots(redis: aioredis.Redis, now: int) -> None:
    """Slots whose lease ended (dead workers) are purged first, so the cap admits the attempt."""
    await redis.zadd(inflight_key(SUB), {"fdl:ledger:dead:1": now - 1, "fdl:ledger:dead:2": now})
    got = await acquire(redis, T1, 1, now, cap=1)
    assert got.verdict == "ok"
    await assert_keyspace(redis, {**STAGED, inflight_key(SUB): ("zset", NO_TTL)})
    assert await zset(redis, inflight_key(SUB)) == {JOB1: now + LEASE_MS}


async def test_cap_reached_with_a_recheck_parks_and_queues_the_subscribers_recheck(
    redis: aioredis.Redis, now: int
) -> None:
    """At the cap with a recheck given: parked (gen bumped, waiting set) with no job of its own;
    the subscriber's one recheck wake job is queued after the recheck (recheck_at kept)."""
    busy = "fdl:ledger:busy:1"
    await redis.zadd(inflight_key(SUB), {busy: now + HOUR_MS})
    recheck = 30_000
    got = await acquire(redis, T1, 1, now, cap=1, lease_ms=3_000, recheck_ms=recheck)
    assert (got.verdict, got.until_ms, got.may_send) == ("cap", 0, False)
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **wake_entry(SUB, now + recheck, recheck),
            inflight_key(SUB): ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert set(queue) == {JOB1, wake_job_id(SUB, now + recheck)}
    assert queue[wake_job_id(SUB, now + recheck)] == now + recheck
    assert await zset(redis, waiting_key(SUB)) == {T1: now}
    assert await zset(redis, inflight_key(SUB)) == {busy: now + HOUR_MS}
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(now + recheck)}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"
    assert await job_body(redis, job_key(wake_job_id(SUB, now + recheck))) == {
        "t": None,
        "f": "fanout_wake",
        "a": [SUB],
        "k": {},
        "et": now,
    }


async def test_cap_reached_rechecks_after_the_lease_by_default(
    redis: aioredis.Redis, now: int
) -> None:
    """At the cap with no recheck given: the subscriber's recheck is due after the lease."""
    # The running job's own key (gen 1) stays: arq removes it when the job returns.
    busy = "fdl:ledger:busy:1"
    await redis.zadd(inflight_key(SUB), {busy: now + HOUR_MS})
    got = await acquire(redis, T1, 1, now, cap=1)
    assert (got.verdict, got.until_ms, got.may_send) == ("cap", 0, False)
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **wake_entry(SUB, now + LEASE_MS, LEASE_MS),
            inflight_key(SUB): ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert (await zset(redis, QUEUE))[wake_job_id(SUB, now + LEASE_MS)] == now + LEASE_MS
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(now + LEASE_MS)}


async def test_cap_reached_with_a_recheck_pending_adds_no_job(
    redis: aioredis.Redis, now: int
) -> None:
    """Many deliveries parked over the cap share one recheck: while one is pending (recheck_at
    ahead), another park queues nothing; one due already (or past) is followed by a new one."""
    busy = "fdl:ledger:busy:1"
    await redis.zadd(inflight_key(SUB), {busy: now + HOUR_MS})
    await acquire(redis, T1, 1, now, cap=1)
    await record(redis, PID2, ["pending"])
    got = await acquire(redis, P2, 1, now + 1_000, cap=1)
    assert got.verdict == "cap"
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **payment_keys(PID2),
            **line(SUB, [P2], PID2),
            **job_entry(SUB, P2, 1),
            **wake_entry(SUB, now + LEASE_MS, LEASE_MS),
            inflight_key(SUB): ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert await zset(redis, waiting_key(SUB)) == {T1: now, P2: now + 1_000}
    # Once the pending recheck's time has come, the next park queues the next one.
    later = now + LEASE_MS
    assert (await acquire(redis, T1, 2, later, cap=1)).verdict == "cap"
    queue = await zset(redis, QUEUE)
    assert {j for j in queue if j.startswith("fwk:")} == {
        wake_job_id(SUB, now + LEASE_MS),
        wake_job_id(SUB, later + LEASE_MS),
    }
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(later + LEASE_MS)}


async def test_parking_again_keeps_the_first_waiting_time(redis: aioredis.Redis, now: int) -> None:
    """A delivery parked twice keeps its place in the waiting set (its first parking time)."""
    await redis.zadd(inflight_key(SUB), {"fdl:ledger:busy:1": now + HOUR_MS})
    await acquire(redis, T1, 1, now, cap=1)
    got = await acquire(redis, T1, 2, now + 5_000, cap=1)
    assert got.verdict == "cap"
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **wake_entry(SUB, now + LEASE_MS, LEASE_MS),
            inflight_key(SUB): ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert await zset(redis, waiting_key(SUB)) == {T1: now}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "3"


async def test_open_breaker_parks_behind_the_cycles_one_wake_job(
    redis: aioredis.Redis, now: int
) -> None:
    """Breaker open: parked with no job of its own; the cycle's wake job (id by open_until) is
    queued at open_until plus jitter ('open', until)."""
    open_until = now + HOUR_MS
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    got = await acquire(redis, T1, 1, now, open_jitter_ms=250)
    assert (got.verdict, got.until_ms) == ("open", open_until)
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **wake_entry(SUB, open_until, HOUR_MS + 250),
            breaker_key(SUB): ("hash", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert set(queue) == {JOB1, wake_job_id(SUB, open_until)}
    assert queue[wake_job_id(SUB, open_until)] == open_until + 250
    assert await zset(redis, waiting_key(SUB)) == {T1: now}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"
    assert (await job_body(redis, job_key(wake_job_id(SUB, open_until))))["a"] == [SUB]


async def test_many_parked_behind_an_open_breaker_share_one_wake_job(
    redis: aioredis.Redis, now: int
) -> None:
    """A second delivery parked behind the same open breaker queues nothing more: the cycle's
    wake job keeps its id and due time."""
    open_until = now + HOUR_MS
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    await acquire(redis, T1, 1, now, open_jitter_ms=250)
    await record(redis, PID2, ["pending"])
    got = await acquire(redis, P2, 1, now + 10, open_jitter_ms=900)
    assert got.verdict == "open"
    await assert_keyspace(
        redis,
        {
            **STAGED,
            **payment_keys(PID2),
            **line(SUB, [P2], PID2),
            **job_entry(SUB, P2, 1),
            **wake_entry(SUB, open_until, HOUR_MS + 250),
            breaker_key(SUB): ("hash", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert {j: at for j, at in queue.items() if j.startswith("fwk:")} == {
        wake_job_id(SUB, open_until): open_until + 250
    }
    assert await zset(redis, waiting_key(SUB)) == {T1: now, P2: now + 10}


async def test_another_probe_in_flight_parks_with_no_job(redis: aioredis.Redis, now: int) -> None:
    """Half-open with another probe in flight: parked with no job ('probing', its lease end);
    the probe's finish decides what comes next."""
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB),
        mapping={"open_until": now - 1, "probe": "fdl:ledger:x:1", "probe_until": now + 9_000},
    )
    got = await acquire(redis, T1, 1, now)
    assert (got.verdict, got.until_ms) == ("probing", now + 9_000)
    await assert_keyspace(
        redis,
        {**STAGED, breaker_key(SUB): ("hash", NO_TTL), waiting_key(SUB): ("zset", NO_TTL)},
    )
    assert list(await zset(redis, QUEUE)) == [JOB1]
    assert await zset(redis, waiting_key(SUB)) == {T1: now}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"


async def test_half_open_breaker_starts_the_probe(redis: aioredis.Redis, now: int) -> None:
    """Half-open with nobody probing: the attempt starts as the probe, recorded in the breaker."""
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": now - 1, "probe": ""})  # type: ignore[misc]
    got = await acquire(redis, T1, 1, now)
    assert (got.verdict, got.may_send, got.body) == ("probe", True, body_of(PID, "pending"))
    await assert_keyspace(
        redis, {**STAGED, breaker_key(SUB): ("hash", NO_TTL), inflight_key(SUB): ("zset", NO_TTL)}
    )
    assert await hash_of(redis, breaker_key(SUB)) == {
        "fails": "5",
        "open_until": str(now - 1),
        "probe": JOB1,
        "probe_until": str(now + LEASE_MS),
    }
    assert await zset(redis, inflight_key(SUB)) == {JOB1: now + LEASE_MS}


async def test_probe_whose_lease_ended_is_taken_over(redis: aioredis.Redis, now: int) -> None:
    """A probe whose lease ended no longer blocks: this attempt becomes the probe."""
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB),
        mapping={"open_until": now - 10, "probe": "fdl:ledger:x:1", "probe_until": now - 1},
    )
    got = await acquire(redis, T1, 1, now)
    assert got.verdict == "probe"
    await assert_keyspace(
        redis, {**STAGED, breaker_key(SUB): ("hash", NO_TTL), inflight_key(SUB): ("zset", NO_TTL)}
    )
    assert (await hash_of(redis, breaker_key(SUB)))["probe"] == JOB1


async def test_the_probe_itself_may_start_again(redis: aioredis.Redis, now: int) -> None:
    """The job that is the probe is not parked by its own probe: it starts again (re-run)."""
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB), mapping={"open_until": now - 10, "probe": JOB1, "probe_until": now + 5}
    )
    got = await acquire(redis, T1, 1, now)
    assert got.verdict == "probe"
    await assert_keyspace(
        redis, {**STAGED, breaker_key(SUB): ("hash", NO_TTL), inflight_key(SUB): ("zset", NO_TTL)}
    )
    assert (await hash_of(redis, breaker_key(SUB)))["probe_until"] == str(now + LEASE_MS)


async def test_disabled_subscriber_parks_without_a_job(redis: aioredis.Redis, now: int) -> None:
    """A disabled subscriber's delivery is parked with no job at all (woken when enabled)."""
    got = await acquire(redis, T1, 1, now, enabled=False)
    assert (got.verdict, got.until_ms) == ("disabled", 0)
    await assert_keyspace(redis, {**STAGED, waiting_key(SUB): ("zset", NO_TTL)})
    assert list(await zset(redis, QUEUE)) == [JOB1]
    assert await zset(redis, waiting_key(SUB)) == {T1: now}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"
