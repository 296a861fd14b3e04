"""converge_due.lua, through ``ConvergeStore.queue_due``: each due payment (at most a batch)
gets a process_event job in arq's format whose hint has source ``convergence``, and moves to
its next step's time; one past the horizon gets a safety net one repeat away; a member whose
state is gone is dropped; nothing else is touched."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.layout import (
    CONVERGE,
    CONVERGENCE_SOURCE,
    PROCESS_EVENT,
    converge_job_id,
)
from service.store.payments import TRANSITIONS_LOG_KEY, state_key
from tests.store.lua.converge_staging import (
    D1_MS,
    HORIZON_MS,
    REPEAT_MS,
    converge_store,
    near,
    record_status,
)
from tests.store.lua.keyspace import (
    NO_TTL,
    assert_keyspace,
    hash_of,
    job_body,
    job_ttl,
    server_ms,
    ttl_s,
    zset,
)
from tests.store.lua.staging import PID, QUEUE, STATE_TTL_S, job_key

STATE = ("hash", ttl_s(STATE_TTL_S))


async def first_ms(redis: aioredis.Redis, pid: str = PID) -> int:
    return int((await hash_of(redis, state_key(pid)))["cv_first"])


async def test_nothing_due_queues_nothing(redis: aioredis.Redis) -> None:
    """A payment whose check is not due yet is left alone: no job, same score, same step."""
    await record_status(redis, PID, "submitted")
    before = await zset(redis, CONVERGE)
    assert await converge_store(redis).queue_due(10) == []
    assert await zset(redis, CONVERGE) == before
    assert (await hash_of(redis, state_key(PID)))["cv_step"] == "0"
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
        },
    )


async def test_a_due_payment_gets_its_check_and_its_next_step(redis: aioredis.Redis) -> None:
    """A due payment: cv_step 1, next check now + the second delay, and a process_event job
    (source convergence, job id per payment, schedule start and step) due now."""
    await record_status(redis, PID, "submitted")
    await redis.zadd(CONVERGE, {PID: 1})
    now = await server_ms(redis)
    assert await converge_store(redis).queue_due(10) == [PID]
    first = await first_ms(redis)
    job_id = converge_job_id(PID, first, 1)
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            job_key(job_id): ("string", job_ttl(0)),
        },
    )
    assert (await hash_of(redis, state_key(PID)))["cv_step"] == "1"
    assert near((await zset(redis, CONVERGE))[PID], now + D1_MS)
    queued = await zset(redis, QUEUE)
    assert list(queued) == [job_id] and near(queued[job_id], now)
    body = await job_body(redis, job_key(job_id))
    assert body["f"] == PROCESS_EVENT and body["t"] is None
    [arg] = body["a"]
    assert arg == {
        "source": CONVERGENCE_SOURCE,
        "event_id": job_id,
        "payment_id": PID,
        "received_at_ms": arg["received_at_ms"],
        "attempt": 0,
    }
    assert near(arg["received_at_ms"], now)


async def test_a_due_payment_past_the_horizon_gets_a_safety_net(redis: aioredis.Redis) -> None:
    """Due at (or past) the horizon: its last check is queued and the member waits one repeat
    delay, so a lost check is tried again instead of queued at every poll."""
    await record_status(redis, PID, "submitted")
    now = await server_ms(redis)
    await redis.hset(state_key(PID), "cv_first", now - HORIZON_MS)
    await redis.zadd(CONVERGE, {PID: now - 1})
    assert await converge_store(redis).queue_due(10) == [PID]
    assert near((await zset(redis, CONVERGE))[PID], now + REPEAT_MS)
    job_id = converge_job_id(PID, now - HORIZON_MS, 1)
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            job_key(job_id): ("string", job_ttl(0)),
        },
    )


async def test_a_member_without_state_is_dropped(redis: aioredis.Redis) -> None:
    """A due member whose state hash expired is removed, with no job (the zset goes)."""
    await redis.zadd(CONVERGE, {"pay_gone": 1})
    assert await converge_store(redis).queue_due(10) == []
    await assert_keyspace(redis, {})


async def test_at_most_a_batch_is_taken_oldest_first(redis: aioredis.Redis) -> None:
    """With three due and a batch of two, the two due first get checks; the third waits."""
    pids = ["pay_a", "pay_b", "pay_c"]
    for n, pid in enumerate(pids):
        await record_status(redis, pid, "submitted")
        await redis.zadd(CONVERGE, {pid: n + 1})
    assert await converge_store(redis).queue_due(2) == ["pay_a", "pay_b"]
    assert (await zset(redis, CONVERGE))["pay_c"] == 3
    jobs = {converge_job_id(pid, await first_ms(redis, pid), 1) for pid in pids[:2]}
    assert set(await zset(redis, QUEUE)) == jobs
    await assert_keyspace(
        redis,
        {
            **{state_key(pid): STATE for pid in pids},
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
            QUEUE: ("zset", NO_TTL),
            **{job_key(j): ("string", job_ttl(0)) for j in jobs},
        },
    )
    assert await converge_store(redis).queue_due(2) == ["pay_c"]
