"""The delivery attempt's finish, run through ``FanoutStore.finish``: the attempt is recorded and
the delivery moves on (delivered, retry, dead, parked, dropped, or stale), the breaker counts the
outcome, and the line's next delivery or a parked one is activated, woken, or handed over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from service.store.batcher import ScriptBatcher
from service.store.deliveries import (
    DEAD_ALL_KEY,
    attempt_log_key,
    breaker_key,
    dead_key,
    delivery_key,
    waiting_key,
)
from service.store.delivery_state import Acquired, FanoutStore, Finished
from service.store.layout import (
    deliver_job_id,
    head_key,
    inflight_key,
    order_key,
    records_key,
    snapshot_key,
    wake_job_id,
)
from service.store.payments import TRANSITIONS_LOG_KEY, Candidate, state_key
from service.store.records import payment_deliveries
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY
from tests.store.lua import staging
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
    DONE_TTL_S,
    LEASE_MS,
    OPERATOR_TTL_S,
    OTHER_SUB,
    PID,
    QUEUE,
    RECEIVED_MS,
    SUB,
    acquire,
    body_of,
    dead,
    finish,
    job_entry,
    line,
    payment_keys,
    payment_store,
    record,
    tid,
    wake_entry,
)

PID2 = "pay_2"
T1, T2 = tid(PID, "pending"), tid(PID, "submitted")
P2 = tid(PID2, "pending")
JOB1 = deliver_job_id(SUB, T1, 1)
HOLD_MS = 5_000


async def stage(redis: aioredis.Redis, statuses: list[str]) -> int:
    """Record a line of ``statuses`` for PID and start its head's attempt; the time it started."""
    await record(redis, PID, statuses)
    now = await server_ms(redis)
    assert (await acquire(redis, T1, 1, now)).verdict == "ok"
    return now


async def park_other(redis: aioredis.Redis, now: int) -> Expected:
    """Park the head of another payment's line (cap reached), with no job of its own; the keys
    that adds (the subscriber's recheck wake job, its time in the breaker hash). Its first job
    stays, as the arq job that ran the acquire would until arq removed it."""
    await record(redis, PID2, ["pending"])
    assert (await acquire(redis, P2, 1, now, cap=0)).verdict == "cap"
    return {
        **payment_keys(PID2),
        **line(SUB, [P2], PID2),
        **job_entry(SUB, P2, 1),
        **recheck_job(now),
        waiting_key(SUB): ("zset", NO_TTL),
        breaker_key(SUB): ("hash", NO_TTL),
    }


def recheck_job(parked_at: int) -> Expected:
    """The recheck wake job park_other's parking queued."""
    return wake_entry(SUB, parked_at + LEASE_MS, LEASE_MS)


def woken_other() -> Expected:
    """The other payment's line after its parked head was woken (its job is at gen 3); nothing
    is parked any more, so the recheck its parking queued was cancelled."""
    return {**payment_keys(PID2), **line(SUB, [P2], PID2), **job_entry(SUB, P2, 1)}


@pytest.fixture(autouse=True, params=["direct", "pipelined"])
async def finish_path(
    request: pytest.FixtureRequest, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    """Each test runs twice: finishes as direct script calls, and through a ScriptBatcher (the
    worker's pipelined connection), which must change nothing they assert."""
    if request.param == "direct":
        yield
        return
    batcher = ScriptBatcher(redis, timeout_s=5.0)
    monkeypatch.setattr(
        staging, "fanout", lambda r: FanoutStore(r, QUEUE, staging.OPERATOR_TTL_S, batcher)
    )
    try:
        yield
    finally:
        await batcher.close()


async def finish_ok(redis: aioredis.Redis, now: int, **kwargs: Any) -> Finished:
    """Finish the started attempt of T1 as delivered."""
    return await finish(redis, T1, 1, now, "ok", **kwargs)


async def test_delivered_activates_the_next_in_line(redis: aioredis.Redis) -> None:
    """Delivered: the hash shrinks to a record (done TTL) and its snapshot goes, slot and job
    dropped, breaker reset, next one activated."""
    now = await stage(redis, ["pending", "submitted"])
    done = await finish_ok(redis, now)
    assert done == Finished("delivered", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    first = (await payment_deliveries(redis, PID, [SUB]))[0]
    assert {k: first[k] for k in ("tid", "state", "attempts", "last_status", "last_error")} == {
        "tid": T1,
        "state": "delivered",
        "attempts": "1",
        "last_status": "200",
        "last_error": "",
    }
    assert first["delivered_ms"] == first["last_ms"] == str(now)
    assert await zset(redis, QUEUE) == {deliver_job_id(SUB, T2, 1): now}
    assert await zset(redis, order_key(SUB, PID)) == {T2: 2}
    assert await redis.get(head_key(SUB, PID)) == T2.encode()
    assert await hash_of(redis, breaker_key(SUB)) == {"fails": "0", "open_until": "0", "probe": ""}


async def test_delivered_last_in_line_leaves_no_line_keys(redis: aioredis.Redis) -> None:
    """Delivering a line's only delivery removes its order, head, slot and queue keys."""
    now = await stage(redis, ["pending"])
    assert (await finish_ok(redis, now)).result == "delivered"
    await assert_keyspace(
        redis,
        {**payment_keys(), breaker_key(SUB): ("hash", NO_TTL)},
    )


async def test_attempt_log_is_written_and_capped(redis: aioredis.Redis) -> None:
    """Attempt log entries go newest first onto the subscriber's list, trimmed to the cap."""
    now = await stage(redis, ["pending", "submitted"])
    await finish(redis, T1, 1, now, "ok", log_entry={"webhook_id": T1}, log_cap=1)
    assert (await acquire(redis, T2, 1, now + 1)).verdict == "ok"
    await finish(redis, T2, 1, now + 2, "ok", log_entry={"webhook_id": T2}, log_cap=1)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            attempt_log_key(SUB): ("list", NO_TTL),
        },
    )
    rows: list[bytes] = await redis.lrange(attempt_log_key(SUB), 0, -1)  # type: ignore[misc]
    assert [orjson.loads(row) for row in rows] == [{"webhook_id": T2}]


async def test_delivered_with_hold_hands_over_the_next_in_line(redis: aioredis.Redis) -> None:
    """With hold_ms the next in line is handed over: slot held, its job deferred by the hold."""
    now = await stage(redis, ["pending", "submitted"])
    done = await finish_ok(redis, now, hold_ms=HOLD_MS)
    job2 = deliver_job_id(SUB, T2, 1)
    assert done == Finished(
        "delivered",
        0,
        0,
        Acquired(
            "ok", 0, body_of(PID, "submitted"), 0, job2, PID, "payment.submitted", RECEIVED_MS
        ),
    )
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1, HOLD_MS),
            breaker_key(SUB): ("hash", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert await zset(redis, QUEUE) == {job2: now + HOLD_MS}
    assert await zset(redis, inflight_key(SUB)) == {job2: now + LEASE_MS}


async def test_hold_at_the_cap_activates_the_next_without_hand_over(
    redis: aioredis.Redis,
) -> None:
    """With hold_ms but no free slot the next is activated with a job due now, not handed."""
    now = await stage(redis, ["pending", "submitted"])
    busy = "fdl:ledger:busy:1"
    await redis.zadd(inflight_key(SUB), {busy: now + 3_600_000})
    done = await finish_ok(redis, now, hold_ms=HOLD_MS, cap=1)
    assert done == Finished("delivered", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
            breaker_key(SUB): ("hash", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert await zset(redis, QUEUE) == {deliver_job_id(SUB, T2, 1): now}
    assert await zset(redis, inflight_key(SUB)) == {busy: now + 3_600_000}


async def test_hold_with_a_stale_subscriber_list_hands_nothing_over(
    redis: aioredis.Redis,
) -> None:
    """With hold_ms but a stale registry version nothing is handed; the next job is due now."""
    now = await stage(redis, ["pending", "submitted"])
    await redis.set(SUBSCRIBERS_VERSION_KEY, "5")
    done = await finish_ok(redis, now, hold_ms=HOLD_MS, version="4")
    assert done == Finished("delivered", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
            breaker_key(SUB): ("hash", NO_TTL),
            SUBSCRIBERS_VERSION_KEY: ("string", NO_TTL),
        },
    )


async def test_hold_with_an_empty_line_hands_over_a_parked_delivery(
    redis: aioredis.Redis,
) -> None:
    """With hold_ms and an empty line the longest-parked delivery is handed over instead."""
    now = await stage(redis, ["pending"])
    await park_other(redis, now)
    done = await finish_ok(redis, now, hold_ms=HOLD_MS)
    job3 = deliver_job_id(SUB, P2, 3)
    assert done.result == "delivered" and done.woken == 1
    assert done.handed is not None
    assert (done.handed.job_id, done.handed.payment_id) == (job3, PID2)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, P2, 3, HOLD_MS),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert (await zset(redis, QUEUE))[job3] == now + HOLD_MS
    assert deliver_job_id(SUB, P2, 2) not in await zset(redis, QUEUE)
    assert await zset(redis, inflight_key(SUB)) == {job3: now + LEASE_MS}


async def test_delivered_wakes_parked_deliveries(redis: aioredis.Redis) -> None:
    """Without hold_ms a success wakes parked deliveries into jobs due now, as slots allow."""
    now = await stage(redis, ["pending"])
    await park_other(redis, now)
    done = await finish_ok(redis, now)
    assert done == Finished("delivered", 1, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
        },
    )
    assert (await zset(redis, QUEUE))[deliver_job_id(SUB, P2, 3)] == now


async def test_failure_with_retry_gives_a_fresh_job(redis: aioredis.Redis) -> None:
    """A failure with a retry time: gen bumped, a fresh job then, one failure counted."""
    now = await stage(redis, ["pending", "submitted"])
    done = await finish(
        redis, T1, 1, now, "fail", retry_at_ms=now + 10_000, status="500", error="boom"
    )
    assert done == Finished("retry", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2, 10_000),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert await zset(redis, QUEUE) == {deliver_job_id(SUB, T1, 2): now + 10_000}
    first = await hash_of(redis, delivery_key(SUB, T1))
    assert {k: first[k] for k in ("state", "gen", "attempts", "last_status", "last_error")} == {
        "state": "active",
        "gen": "2",
        "attempts": "1",
        "last_status": "500",
        "last_error": "boom",
    }
    assert await redis.get(head_key(SUB, PID)) == T1.encode()
    assert await hash_of(redis, breaker_key(SUB)) == {"fails": "1"}


async def test_failure_under_the_threshold_still_wakes_parked(redis: aioredis.Redis) -> None:
    """A retried failure that does not open the breaker frees its slot for a parked delivery."""
    now = await stage(redis, ["pending"])
    await park_other(redis, now)
    done = await finish(redis, T1, 1, now, "fail", retry_at_ms=now + 10_000)
    assert (done.result, done.woken) == ("retry", 1)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **job_entry(SUB, T1, 2, 10_000),
            breaker_key(SUB): ("hash", NO_TTL),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
        },
    )


def t1_dead_t2_next() -> Expected:
    """The keyspace once T1 is dead-lettered: its dead letter and both indexes, T2 active in
    the line with its job, the breaker hash."""
    return {
        **payment_keys(),
        **line(SUB, [T2]),
        **dead(SUB, T1),
        QUEUE: ("zset", NO_TTL),
        **job_entry(SUB, T2, 1),
        breaker_key(SUB): ("hash", NO_TTL),
        DEAD_ALL_KEY: ("zset", NO_TTL),
        dead_key(SUB): ("zset", NO_TTL),
    }


async def test_failure_without_retry_dead_letters(redis: aioredis.Redis) -> None:
    """A failure with no retry left: dead letter (hash and snapshot kept the operator TTL, both
    dead sets), next activated."""
    now = await stage(redis, ["pending", "submitted"])
    done = await finish(redis, T1, 1, now, "fail", status="500", error="boom")
    assert done == Finished("dead", 0, 1, None)
    await assert_keyspace(
        redis,
        t1_dead_t2_next(),
    )
    first = await hash_of(redis, delivery_key(SUB, T1))
    assert (first["state"], first["dead_ms"], first["attempts"]) == ("dead", str(now), "1")
    assert await zset(redis, DEAD_ALL_KEY) == {f"{SUB}/{T1}": now}
    assert await zset(redis, dead_key(SUB)) == {T1: now}
    assert await zset(redis, order_key(SUB, PID)) == {T2: 2}
    assert await redis.get(head_key(SUB, PID)) == T2.encode()


async def test_gone_parks_without_a_job_and_wakes_nothing(redis: aioredis.Redis) -> None:
    """A 410 parks the delivery without a job, leaves the breaker alone, wakes nothing."""
    now = await stage(redis, ["pending"])
    parked = await park_other(redis, now)
    done = await finish(redis, T1, 1, now + 1, "gone", status="410")
    assert done == Finished("parked", 0, 0, None)
    await assert_keyspace(
        redis, {**payment_keys(), **line(SUB, [T1]), **parked, QUEUE: ("zset", NO_TTL)}
    )
    assert await zset(redis, waiting_key(SUB)) == {P2: now, T1: now + 1}
    first = await hash_of(redis, delivery_key(SUB, T1))
    assert (first["state"], first["gen"], first["attempts"]) == ("active", "2", "1")


async def test_removed_subscriber_drops_and_wakes_one(redis: aioredis.Redis) -> None:
    """Removed subscriber: dropped (done TTL, not counted), line advances, one parked woken."""
    now = await stage(redis, ["pending", "submitted"])
    await park_other(redis, now)
    done = await finish(redis, T1, 1, now, "removed", enabled=False, recheck_ms=HOLD_MS)
    assert done == Finished("dropped", 1, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            **job_entry(SUB, T2, 1),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
        },
    )
    first = (await payment_deliveries(redis, PID, [SUB]))[0]
    assert (first["tid"], first["state"], first["attempts"]) == (T1, "dropped", "0")


async def test_last_drop_of_a_removed_subscriber_leaves_its_attempt_log(
    redis: aioredis.Redis,
) -> None:
    """A removed subscriber's last drop leaves its attempt log behind, with no TTL."""
    now = await stage(redis, ["pending"])
    done = await finish(redis, T1, 1, now, "removed", enabled=False, log_entry={"webhook_id": T1})
    assert done == Finished("dropped", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            attempt_log_key(SUB): ("list", NO_TTL),
        },
    )


async def test_stale_finish_still_spends_its_job_and_counts_the_breaker(
    redis: aioredis.Redis,
) -> None:
    """A stale finish changes no delivery but spends its job, logs, and resets the breaker."""
    now = await stage(redis, ["pending"])
    assert (await acquire(redis, T1, 1, now, enabled=False)).verdict == "disabled"  # gen 2
    done = await finish(redis, T1, 1, now, "ok", log_entry={"webhook_id": T1})
    assert done == Finished("stale", 1, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            **job_entry(SUB, T1, 3),
            breaker_key(SUB): ("hash", NO_TTL),
            attempt_log_key(SUB): ("list", NO_TTL),
        },
    )
    first = await hash_of(redis, delivery_key(SUB, T1))
    assert (first["state"], first["gen"], first["attempts"]) == ("active", "3", "0")


async def test_failure_at_the_threshold_opens_the_breaker(redis: aioredis.Redis) -> None:
    """The failure reaching the threshold opens the breaker; no parked delivery is woken."""
    now = await stage(redis, ["pending"])
    parked = await park_other(redis, now)
    done = await finish(
        redis,
        T1,
        1,
        now,
        "fail",
        retry_at_ms=now + 10_000,
        threshold=1,
        cooldown_ms=60_000,
        open_jitter_ms=300,
    )
    assert (done.result, done.woken) == ("retry", 0)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2, 10_000),
            breaker_key(SUB): ("hash", NO_TTL),
            **parked,
            **wake_entry(SUB, now + 60_000, 60_300),
        },
    )
    assert await hash_of(redis, breaker_key(SUB)) == {
        "fails": "1",
        "open_until": str(now + 60_000),
        "recheck_at": str(now + LEASE_MS),
    }
    # The cycle's one wake job, due when the cool-down ends (plus the jitter).
    assert (await zset(redis, QUEUE))[wake_job_id(SUB, now + 60_000)] == now + 60_300


async def test_failure_while_open_keeps_the_breaker_as_it_is(redis: aioredis.Redis) -> None:
    """A non-probe failure while open counts, keeps open_until, and wakes nothing."""
    now = await stage(redis, ["pending"])
    parked = await park_other(redis, now)
    await redis.hset(breaker_key(SUB), mapping={"fails": 3, "open_until": now - 5})  # type: ignore[misc]
    done = await finish(redis, T1, 1, now, "fail", retry_at_ms=now + 10_000, threshold=100)
    assert (done.result, done.woken) == ("retry", 0)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2, 10_000),
            breaker_key(SUB): ("hash", NO_TTL),
            **parked,
        },
    )
    assert await hash_of(redis, breaker_key(SUB)) == {
        "fails": "4",
        "open_until": str(now - 5),
        "recheck_at": str(now + LEASE_MS),
    }


async def test_failed_probe_reopens_the_breaker(redis: aioredis.Redis) -> None:
    """A failed probe opens the breaker again for a full cooldown and clears the probe."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": now - 1})  # type: ignore[misc]
    assert (await acquire(redis, T1, 1, now)).verdict == "probe"
    done = await finish(redis, T1, 1, now + 100, "fail", retry_at_ms=now + 10_000)
    assert done.result == "retry" and done.woken == 0
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 2, 9_900),
            breaker_key(SUB): ("hash", NO_TTL),
            **wake_entry(SUB, now + 100 + 60_000, 60_000),
        },
    )
    # The next cycle's one wake job, due when its cool-down ends.
    assert await zset(redis, QUEUE) == {
        deliver_job_id(SUB, T1, 2): now + 10_000,
        wake_job_id(SUB, now + 100 + 60_000): now + 100 + 60_000,
    }
    breaker = await hash_of(redis, breaker_key(SUB))
    assert breaker == {
        "fails": "6",
        "open_until": str(now + 100 + 60_000),
        "probe": "",
        "probe_until": str(now + LEASE_MS),
    }


async def test_successful_probe_closes_the_breaker_and_wakes(redis: aioredis.Redis) -> None:
    """A successful probe closes the breaker and wakes parked deliveries."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": now - 1})  # type: ignore[misc]
    assert (await acquire(redis, T1, 1, now)).verdict == "probe"
    await record(redis, PID2, ["pending"])
    assert (await acquire(redis, P2, 1, now)).verdict == "probing"
    done = await finish(redis, T1, 1, now, "ok")
    assert done == Finished("delivered", 1, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            **payment_keys(PID2),
            **line(SUB, [P2], PID2),
            **job_entry(SUB, P2, 1),
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
        },
    )
    assert await hash_of(redis, breaker_key(SUB)) == {
        "fails": "0",
        "open_until": "0",
        "probe": "",
        "probe_until": str(now + LEASE_MS),
    }


async def test_disabled_subscriber_is_handed_nothing_and_wakes_nothing(
    redis: aioredis.Redis,
) -> None:
    """Disabled subscriber: the line advances, but nothing is handed over or woken."""
    now = await stage(redis, ["pending", "submitted"])
    parked = await park_other(redis, now)
    done = await finish(redis, T1, 1, now, "ok", enabled=False, hold_ms=HOLD_MS)
    assert done == Finished("delivered", 0, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T2, 1),
            breaker_key(SUB): ("hash", NO_TTL),
            **parked,
        },
    )
    assert (await zset(redis, QUEUE))[deliver_job_id(SUB, T2, 1)] == now


async def test_lapsed_slot_of_a_dead_holder_is_freed_and_wakes_a_parked_one(
    redis: aioredis.Redis,
) -> None:
    """A slot whose lease lapsed (its worker died) is dropped, so its room wakes a parked one."""
    now = await stage(redis, ["pending"])
    await park_other(redis, now)
    dead, live = "fdl:ledger:dead:1", "fdl:ledger:live:1"
    await redis.zadd(inflight_key(SUB), {dead: now - 1, live: now + 60_000})
    done = await finish_ok(redis, now, cap=2)
    job3 = deliver_job_id(SUB, P2, 3)
    assert done.result == "delivered" and done.woken == 1
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert (await zset(redis, QUEUE))[job3] == now
    # The woken job holds the freed slot for a lease until it runs.
    assert await zset(redis, inflight_key(SUB)) == {live: now + 60_000, job3: now + LEASE_MS}


async def test_dead_letters_older_than_the_operator_ttl_leave_the_indexes(
    redis: aioredis.Redis,
) -> None:
    """A new dead letter trims index entries older than the operator TTL (their hashes have
    expired), and keeps younger ones."""
    now = await stage(redis, ["pending", "submitted"])
    old, young = now - OPERATOR_TTL_S * 1000 - 1, now - 1000
    await redis.zadd(DEAD_ALL_KEY, {f"{SUB}/msg_old": old, f"{SUB}/msg_young": young})
    await redis.zadd(dead_key(SUB), {"msg_old": old, "msg_young": young})
    await finish(redis, T1, 1, now, "fail", status="500")
    await assert_keyspace(
        redis,
        t1_dead_t2_next(),
    )
    assert await zset(redis, DEAD_ALL_KEY) == {f"{SUB}/msg_young": young, f"{SUB}/{T1}": now}
    assert await zset(redis, dead_key(SUB)) == {"msg_young": young, T1: now}


async def test_delivered_to_one_of_two_keeps_the_snapshot_for_the_other(
    redis: aioredis.Redis,
) -> None:
    """A transition two subscribers want: the first delivery shrinks to its record and drops
    one reference; the snapshot goes with the second."""
    await record(redis, PID, ["pending"], subscribers=(SUB, OTHER_SUB))
    now = await server_ms(redis)
    assert (await acquire(redis, T1, 1, now)).verdict == "ok"
    assert (await finish(redis, T1, 1, now, "ok")).result == "delivered"
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(OTHER_SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(OTHER_SUB, T1, 1),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert await redis.hget(snapshot_key(T1), "refs") == b"1"  # type: ignore[misc]
    handed = await acquire(redis, T1, 1, now, sub=OTHER_SUB)
    assert handed.body == body_of(PID, "pending")
    await finish(redis, T1, 1, now + 5, "ok", sub=OTHER_SUB)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            breaker_key(OTHER_SUB): ("hash", NO_TTL),
        },
    )
    rows = await payment_deliveries(redis, PID, [SUB, OTHER_SUB])
    assert [(r["sub"], r["tid"], r["state"]) for r in rows] == [
        (SUB, T1, "delivered"),
        (OTHER_SUB, T1, "delivered"),
    ]
    assert rows[1]["delivered_ms"] == str(now + 5)


async def test_a_canceled_delivery_record_keeps_its_status(redis: aioredis.Redis) -> None:
    """canceled and failed share a seq: the record of a canceled delivery keeps its status, so
    history derives its webhook-id and type; a long error is cut so the record stays within 64
    bytes (a small hash stays a listpack)."""
    canceled = tid(PID, "canceled")
    await payment_store(redis).record(
        PID,
        "tok",
        seq=6,
        status="canceled",
        at="2024-05-01T10:00:00Z",
        candidates=[
            Candidate(6, "canceled", canceled, "payment.canceled", b"{}", (SUB,)),
        ],
        subscribers_version="0",
    )
    now = await server_ms(redis)
    assert (await acquire(redis, canceled, 1, now)).verdict == "ok"
    await finish(redis, canceled, 1, now, "ok", status="204", error="e" * 100)
    stored = await redis.hget(records_key(PID), f"{SUB}:6")  # type: ignore[misc]
    assert stored is not None and len(stored) == 64 and stored.endswith(b",canceled")
    (row,) = await payment_deliveries(redis, PID, [SUB])
    assert (row["tid"], row["type"], row["seq"], row["last_status"]) == (
        canceled,
        "payment.canceled",
        "6",
        "204",
    )


async def test_records_outlive_a_lost_state_for_the_done_ttl(redis: aioredis.Redis) -> None:
    """A delivery finished after its payment's state expired: its record makes a hash of its
    own that lives the done TTL (not forever)."""
    now = await stage(redis, ["pending"])
    await redis.delete(state_key(PID))
    assert (await finish_ok(redis, now)).result == "delivered"
    await assert_keyspace(
        redis,
        {
            state_key(PID): ("hash", ttl_s(DONE_TTL_S)),
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    (row,) = await payment_deliveries(redis, PID, [SUB])
    assert (row["tid"], row["state"]) == (T1, "delivered")


async def test_successful_probe_releases_only_the_free_slots_and_rechecks(
    redis: aioredis.Redis,
) -> None:
    """A probe's success releases parked deliveries at the cap's rate: jobs for the free slots
    only, the rest stay parked (no job of their own), and one recheck is queued for them."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    open_until = now - 1
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": now + 1})  # type: ignore[misc]
    others = ["pay_a", "pay_b", "pay_c"]
    for n, pid in enumerate(others):
        await record(redis, pid, ["pending"])
        assert (await acquire(redis, tid(pid, "pending"), 1, now - 10 + n)).verdict == "open"
    await redis.hset(breaker_key(SUB), "open_until", open_until)  # type: ignore[misc]
    assert (await acquire(redis, T1, 1, now)).verdict == "probe"
    done = await finish(redis, T1, 1, now, "ok", cap=2, recheck_ms=HOLD_MS)
    assert done == Finished("delivered", 2, 0, None)
    expected: Expected = {
        **payment_keys(),
        breaker_key(SUB): ("hash", NO_TTL),
        QUEUE: ("zset", NO_TTL),
        waiting_key(SUB): ("zset", NO_TTL),
        inflight_key(SUB): ("zset", NO_TTL),
        **wake_entry(SUB, now + 1, 11),
        **wake_entry(SUB, now + HOLD_MS, HOLD_MS),
    }
    for pid in others:
        expected.update(payment_keys(pid))
        expected.update(line(SUB, [tid(pid, "pending")], pid))
        expected.update(job_entry(SUB, tid(pid, "pending"), 1))
    for pid in others[:2]:
        expected.update(job_entry(SUB, tid(pid, "pending"), 3))
    await assert_keyspace(redis, expected)
    assert await zset(redis, waiting_key(SUB)) == {tid("pay_c", "pending"): now - 8}
    queue = await zset(redis, QUEUE)
    assert {j: at for j, at in queue.items() if j.endswith(":3")} == {
        deliver_job_id(SUB, tid("pay_a", "pending"), 3): now,
        deliver_job_id(SUB, tid("pay_b", "pending"), 3): now,
    }
    assert queue[wake_job_id(SUB, now + HOLD_MS)] == now + HOLD_MS
    assert (await hash_of(redis, breaker_key(SUB)))["recheck_at"] == str(now + HOLD_MS)
    # Each woken job holds its slot for a lease until it runs: the next finish counts them.
    assert await zset(redis, inflight_key(SUB)) == {
        deliver_job_id(SUB, tid(pid, "pending"), 3): now + LEASE_MS for pid in others[:2]
    }


async def test_finish_with_a_recheck_pending_queues_no_other(redis: aioredis.Redis) -> None:
    """Deliveries still parked after a finish, with a recheck pending already: nothing more is
    queued (one recheck at a time per subscriber)."""
    now = await stage(redis, ["pending"])
    parked = await park_other(redis, now)
    busy = "fdl:ledger:busy:1"
    await redis.zadd(inflight_key(SUB), {busy: now + 60_000})
    done = await finish_ok(redis, now + 1, cap=1, recheck_ms=HOLD_MS)
    assert (done.result, done.woken) == ("delivered", 0)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **parked,
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    assert (await hash_of(redis, breaker_key(SUB)))["recheck_at"] == str(now + LEASE_MS)


async def test_success_while_still_open_cancels_the_cycles_wake_job(
    redis: aioredis.Redis,
) -> None:
    """An attempt begun before the breaker opened succeeds before the cool-down ends: the
    breaker closes and that cycle's wake job leaves the queue."""
    now = await stage(redis, ["pending"])
    await record(redis, PID2, ["pending"])
    open_until = now + 60_000
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    assert (await acquire(redis, P2, 1, now)).verdict == "open"
    assert wake_job_id(SUB, open_until) in await zset(redis, QUEUE)
    done = await finish_ok(redis, now + 1)
    assert done == Finished("delivered", 1, 0, None)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            breaker_key(SUB): ("hash", NO_TTL),
            **woken_other(),
            QUEUE: ("zset", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
            **job_entry(SUB, P2, 3),
        },
    )
    queue = await zset(redis, QUEUE)
    assert queue[deliver_job_id(SUB, P2, 3)] == now + 1
    assert wake_job_id(SUB, open_until) not in queue
    assert await hash_of(redis, breaker_key(SUB)) == {"fails": "0", "open_until": "0", "probe": ""}
