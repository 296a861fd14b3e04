"""payment_record.lua's convergence block (lib/converge.lua), through
``PaymentStateStore.record`` with a plan: a non-terminal record starts or pushes back the
payment's schedule in ``kh:converge``, a final one ends it, one past the horizon moves it to
``kh:stuck`` (capped), and a newer state takes a stuck payment off that list."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.store.layout import CONVERGE, STUCK
from service.store.payments import FINAL_STATE_TTL_S, TRANSITIONS_LOG_KEY, state_key
from tests.store.lua.converge_staging import (
    D0_MS,
    D1_MS,
    HORIZON_MS,
    near,
    record_status,
)
from tests.store.lua.keyspace import NO_TTL, assert_keyspace, hash_of, server_ms, ttl_s, zset
from tests.store.lua.staging import PID, STATE_TTL_S

STATE = ("hash", ttl_s(STATE_TTL_S))
# A final state, shrunk to (seq, status).
FINAL_STATE = ("hash", ttl_s(FINAL_STATE_TTL_S))


async def test_first_non_terminal_record_schedules_the_first_check(redis: aioredis.Redis) -> None:
    """A first non-terminal state puts the payment in kh:converge, due the first delay after
    now, with cv_first = now and cv_step = 0 in its state hash."""
    now = await server_ms(redis)
    result = await record_status(redis, PID, "submitted")
    assert not result.stuck
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
        },
    )
    state = await hash_of(redis, state_key(PID))
    assert near(int(state["cv_first"]), now) and state["cv_step"] == "0"
    assert near((await zset(redis, CONVERGE))[PID], int(state["cv_first"]) + D0_MS, 50)


async def test_a_later_record_pushes_the_check_back_never_forward(redis: aioredis.Redis) -> None:
    """A record of a non-terminal state moves the check to now + the current step's delay when
    that is later, and leaves a later check where it is."""
    await record_status(redis, PID, "submitted")
    await redis.zadd(CONVERGE, {PID: 1})  # as if due long ago
    now = await server_ms(redis)
    await record_status(redis, PID, "approved")
    pushed = (await zset(redis, CONVERGE))[PID]
    assert near(pushed, now + D0_MS)
    far = pushed + 10 * D1_MS
    await redis.zadd(CONVERGE, {PID: far})
    await record_status(redis, PID, "approved")  # the same state again: nothing newer
    assert (await zset(redis, CONVERGE))[PID] == far
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
        },
    )


async def test_the_schedule_never_passes_the_horizon(redis: aioredis.Redis) -> None:
    """Near the horizon the next check is the horizon itself, not now + the delay."""
    await record_status(redis, PID, "submitted")
    now = await server_ms(redis)
    first = now - HORIZON_MS + 1_000  # one second before the horizon
    await redis.hset(state_key(PID), "cv_first", first)
    await redis.zadd(CONVERGE, {PID: 1})  # as if due long ago
    await record_status(redis, PID, "approved")
    assert (await zset(redis, CONVERGE))[PID] == first + HORIZON_MS


async def test_a_final_state_ends_the_schedule(redis: aioredis.Redis) -> None:
    """A completed payment leaves kh:converge (the zset goes), and its state shrinks to (seq,
    status) with the final state's TTL."""
    await record_status(redis, PID, "captured")
    await record_status(redis, PID, "completed")
    await assert_keyspace(
        redis, {state_key(PID): FINAL_STATE, TRANSITIONS_LOG_KEY: ("stream", NO_TTL)}
    )
    assert await hash_of(redis, state_key(PID)) == {"seq": "5", "status": "completed"}


async def test_a_failed_payment_is_never_scheduled(redis: aioredis.Redis) -> None:
    """A first record in a terminal branch state (failed) schedules nothing."""
    await record_status(redis, PID, "failed")
    await assert_keyspace(redis, {state_key(PID): FINAL_STATE})
    assert "cv_first" not in await hash_of(redis, state_key(PID))


async def test_a_record_past_the_horizon_reports_the_payment_stuck(redis: aioredis.Redis) -> None:
    """Not terminal past the horizon: it leaves kh:converge for kh:stuck (scored now), and the
    record says stuck once; a later record of the same state leaves it there, not stuck again."""
    await record_status(redis, PID, "submitted")
    now = await server_ms(redis)
    await redis.hset(state_key(PID), "cv_first", now - HORIZON_MS - 1)
    result = await record_status(redis, PID, "submitted")
    assert result.stuck
    await assert_keyspace(
        redis,
        {state_key(PID): STATE, TRANSITIONS_LOG_KEY: ("stream", NO_TTL), STUCK: ("zset", NO_TTL)},
    )
    assert near((await zset(redis, STUCK))[PID], now)
    again = await record_status(redis, PID, "submitted")
    assert not again.stuck
    assert list(await zset(redis, STUCK)) == [PID]
    assert await redis.exists(CONVERGE) == 0


async def test_a_newer_state_takes_a_stuck_payment_off_the_list(redis: aioredis.Redis) -> None:
    """A stuck payment that moves on (a newer non-terminal state) leaves kh:stuck and starts
    a fresh schedule: cv_first now, step 0, due the first delay from now."""
    await record_status(redis, PID, "submitted")
    now = await server_ms(redis)
    await redis.hset(state_key(PID), "cv_first", now - HORIZON_MS - 1)
    assert (await record_status(redis, PID, "submitted")).stuck
    await record_status(redis, PID, "approved")
    await assert_keyspace(
        redis,
        {
            state_key(PID): STATE,
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            CONVERGE: ("zset", NO_TTL),
        },
    )
    state = await hash_of(redis, state_key(PID))
    assert near(int(state["cv_first"]), now) and state["cv_step"] == "0"
    assert (await zset(redis, CONVERGE))[PID] == int(state["cv_first"]) + D0_MS


async def test_a_final_state_takes_a_stuck_payment_off_the_list(redis: aioredis.Redis) -> None:
    """A stuck payment that completes leaves kh:stuck (the zset goes) and is not scheduled."""
    await record_status(redis, PID, "captured")
    now = await server_ms(redis)
    await redis.hset(state_key(PID), "cv_first", now - HORIZON_MS - 1)
    assert (await record_status(redis, PID, "captured")).stuck
    await record_status(redis, PID, "completed")
    await assert_keyspace(
        redis, {state_key(PID): FINAL_STATE, TRANSITIONS_LOG_KEY: ("stream", NO_TTL)}
    )


async def test_the_stuck_list_is_capped_oldest_out(redis: aioredis.Redis) -> None:
    """With stuck_max 2, a third stuck payment pushes the one stuck longest off kh:stuck."""
    now = await server_ms(redis)
    pids = ["pay_a", "pay_b", "pay_c"]
    for pid in pids:
        await record_status(redis, pid, "submitted")
        await redis.hset(state_key(pid), "cv_first", now - HORIZON_MS - 1)
        assert (await record_status(redis, pid, "submitted")).stuck
    assert sorted(await zset(redis, STUCK)) == ["pay_b", "pay_c"]
    await assert_keyspace(
        redis,
        {
            **{state_key(pid): STATE for pid in pids},
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            STUCK: ("zset", NO_TTL),
        },
    )
