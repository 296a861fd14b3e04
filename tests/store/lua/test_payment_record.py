"""Processing's compare-and-set, run through ``PaymentStateStore.record``: a newer state is
recorded with the deliveries of its transitions (the first of each line activated, or started
for the caller with ``hold_ms``), and the fetch lock is let go or kept for one more fetch."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.store.compression import ZSTD_MAGIC, decompress
from service.store.deliveries import breaker_key, delivery_key, waiting_key
from service.store.delivery_state import Acquired
from service.store.layout import (
    deliver_job_id,
    head_key,
    inflight_key,
    order_key,
    snapshot_key,
    wake_job_id,
)
from service.store.layout import payment_dirty_key as _dirty_key
from service.store.layout import payment_lock_key as _lock_key
from service.store.payments import TRANSITIONS_LOG_KEY, StaleSubscribers, state_key
from service.store.records import payment_deliveries
from service.store.subscribers import SUBSCRIBERS_VERSION_KEY
from tests.store.lua.keyspace import (
    NO_TTL,
    assert_keyspace,
    hash_of,
    job_body,
    job_ttl,
    server_ms,
    ttl_ms,
    ttl_s,
    zset,
)
from tests.store.lua.staging import (
    DIRTY_TTL_S,
    LEASE_MS,
    LOCK_TTL_MS,
    OTHER_SUB,
    PID,
    QUEUE,
    RECEIVED_MS,
    STATE_TTL_S,
    SUB,
    acquire,
    body_of,
    finish,
    job_entry,
    job_key,
    line,
    payment_keys,
    payment_store,
    record,
    tid,
)

HOLD_MS = 5_000
T1, T2, T3 = tid(PID, "pending"), tid(PID, "submitted"), tid(PID, "approved")


async def stream(redis: aioredis.Redis) -> list[dict[str, str]]:
    rows = await redis.xrange(TRANSITIONS_LOG_KEY)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


async def test_stale_subscribers_write_nothing(redis: aioredis.Redis) -> None:
    """A stale subscriber list raises StaleSubscribers; nothing written, the lock is kept."""
    await redis.set(SUBSCRIBERS_VERSION_KEY, "3")
    await payment_store(redis).acquire(PID, "tok")
    with pytest.raises(StaleSubscribers):
        await record(redis, PID, ["pending"], version="2")
    await assert_keyspace(
        redis,
        {
            SUBSCRIBERS_VERSION_KEY: ("string", NO_TTL),
            _lock_key(PID): ("string", ttl_ms(LOCK_TTL_MS)),
        },
    )


async def test_missing_registry_version_counts_as_zero(redis: aioredis.Redis) -> None:
    """With no registry version in Redis, any version but '0' is stale: nothing is written."""
    with pytest.raises(StaleSubscribers):
        await record(redis, PID, ["pending"], version="1")
    await assert_keyspace(redis, {})


async def test_first_state_without_candidates_records_only_the_state(
    redis: aioredis.Redis,
) -> None:
    """A first state with no transitions writes the state hash (with its TTL) and nothing else."""
    store = payment_store(redis)
    result = await store.record(PID, "tok", 1, "pending", "2024-05-01T10:00:00Z", [], "0")
    assert (result.previous_seq, result.emitted, result.fetch_again) == (-1, 0, False)
    await assert_keyspace(redis, {state_key(PID): ("hash", ttl_s(STATE_TTL_S))})
    assert await store.recorded(PID) == {
        "seq": "1",
        "status": "pending",
        "at": "2024-05-01T10:00:00Z",
    }


async def test_transition_nobody_wants_is_logged_without_deliveries(
    redis: aioredis.Redis,
) -> None:
    """A transition with no subscriber is emitted to the log only: no delivery key, no job."""
    result = await record(redis, PID, ["pending"], subscribers=())
    assert (result.previous_seq, result.emitted) == (-1, 1)
    await assert_keyspace(redis, payment_keys())
    assert await stream(redis) == [
        {"payment_id": PID, "status": "pending", "webhook_id": T1, "subscribers": "0"}
    ]


async def test_newer_state_creates_a_line_with_its_first_delivery_active(
    redis: aioredis.Redis,
) -> None:
    """Two transitions: two deliveries, the first active with a job due now, one queued."""
    before = await server_ms(redis)
    result = await record(redis, PID, ["pending", "submitted"])
    after = await server_ms(redis)
    assert (result.previous_seq, result.emitted, result.fetch_again) == (-1, 2, False)
    assert result.started == ()
    job = deliver_job_id(SUB, T1, 1)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1),
        },
    )
    queue = await zset(redis, QUEUE)
    assert list(queue) == [job] and before <= queue[job] <= after
    body = await job_body(redis, job_key(job))
    assert body == {"t": None, "f": "fanout_deliver", "a": [SUB, T1], "k": {}, "et": queue[job]}
    assert await zset(redis, order_key(SUB, PID)) == {T1: 1, T2: 2}
    assert await redis.get(head_key(SUB, PID)) == T1.encode()
    first = await hash_of(redis, delivery_key(SUB, T1))
    assert before <= int(first.pop("created_ms")) <= after
    assert int(first.pop("activated_ms")) == queue[job]
    assert first == {
        "sub": SUB,
        "tid": T1,
        "payment_id": PID,
        "seq": "1",
        "type": "payment.pending",
        "state": "active",
        "gen": "1",
        "attempts": "0",
        "received_ms": str(RECEIVED_MS),
    }
    assert await redis.hget(snapshot_key(T1), "refs") == b"1"  # type: ignore[misc]
    assert decompress(await redis.hget(snapshot_key(T1), "z")) == body_of(PID, "pending")  # type: ignore[misc]
    second = await hash_of(redis, delivery_key(SUB, T2))
    assert (second["state"], second["gen"], second["seq"]) == ("queued", "0", "2")
    assert await stream(redis) == [
        {"payment_id": PID, "status": "pending", "webhook_id": T1, "subscribers": "1"},
        {"payment_id": PID, "status": "submitted", "webhook_id": T2, "subscribers": "1"},
    ]
    assert await redis.hget(state_key(PID), "seq") == b"2"  # type: ignore[misc]


async def test_each_subscriber_gets_a_line_of_its_own(redis: aioredis.Redis) -> None:
    """Two subscribers that want a transition get one delivery and one active head each."""
    result = await record(redis, PID, ["pending"], subscribers=(SUB, OTHER_SUB))
    assert result.emitted == 1
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **line(OTHER_SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1),
            **job_entry(OTHER_SUB, T1, 1),
        },
    )
    assert set(await zset(redis, QUEUE)) == {
        deliver_job_id(SUB, T1, 1),
        deliver_job_id(OTHER_SUB, T1, 1),
    }


async def test_older_state_changes_nothing_but_renews_the_state_ttl(
    redis: aioredis.Redis,
) -> None:
    """An older seq is not recorded: no delivery, no log entry; the state's TTL is renewed."""
    await record(redis, PID, ["pending", "submitted"])
    await redis.pexpire(state_key(PID), 1_000)
    queue = await zset(redis, QUEUE)
    result = await record(redis, PID, ["pending"])
    assert (result.previous_seq, result.emitted, result.fetch_again) == (2, 0, False)
    await assert_keyspace(
        redis,
        {**payment_keys(), **line(SUB, [T1, T2]), QUEUE: ("zset", NO_TTL), **job_entry(SUB, T1, 1)},
    )
    assert await redis.hget(state_key(PID), "seq") == b"2"  # type: ignore[misc]
    assert await zset(redis, QUEUE) == queue
    assert len(await stream(redis)) == 2


async def test_unchanged_state_emits_nothing(redis: aioredis.Redis) -> None:
    """The same seq again is no news: nothing is emitted and no delivery is added."""
    await record(redis, PID, ["pending"])
    result = await record(redis, PID, ["pending"])
    assert (result.previous_seq, result.emitted) == (1, 0)
    await assert_keyspace(
        redis,
        {**payment_keys(), **line(SUB, [T1]), QUEUE: ("zset", NO_TTL), **job_entry(SUB, T1, 1)},
    )
    assert len(await stream(redis)) == 1
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "1"


async def test_newer_state_emits_only_transitions_past_the_old_one(
    redis: aioredis.Redis,
) -> None:
    """Candidates at or below the recorded seq are skipped; newer ones queue in the line."""
    await record(redis, PID, ["pending"])
    result = await record(redis, PID, ["pending", "submitted", "approved"])
    assert (result.previous_seq, result.emitted) == (1, 2)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2, T3]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1),
        },
    )
    assert await zset(redis, order_key(SUB, PID)) == {T1: 1, T2: 2, T3: 3}
    assert await redis.get(head_key(SUB, PID)) == T1.encode()
    assert [(await hash_of(redis, delivery_key(SUB, t)))["state"] for t in (T2, T3)] == [
        "queued",
        "queued",
    ]
    assert [row["webhook_id"] for row in await stream(redis)] == [T1, T2, T3]


async def test_existing_delivery_is_not_created_again(redis: aioredis.Redis) -> None:
    """After the state expired a transition is logged again, its delivery not recreated."""
    await record(redis, PID, ["pending"])
    await redis.delete(state_key(PID))
    result = await record(redis, PID, ["pending"])
    assert (result.previous_seq, result.emitted) == (-1, 1)
    await assert_keyspace(
        redis,
        {**payment_keys(), **line(SUB, [T1]), QUEUE: ("zset", NO_TTL), **job_entry(SUB, T1, 1)},
    )
    assert list(await zset(redis, QUEUE)) == [deliver_job_id(SUB, T1, 1)]
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "1"
    assert await redis.hget(snapshot_key(T1), "refs") == b"1"  # type: ignore[misc]
    assert len(await stream(redis)) == 2


async def test_finished_delivery_is_not_created_again(redis: aioredis.Redis) -> None:
    """A delivery shrunk to its record (kept in the payment's state hash) is not created again
    when the state itself was lost: no delivery, no snapshot, no job; the record stays."""
    await record(redis, PID, ["pending"])
    now = await server_ms(redis)
    assert (await acquire(redis, T1, 1, now)).verdict == "ok"
    assert (await finish(redis, T1, 1, now, "ok")).result == "delivered"
    assert await redis.hdel(state_key(PID), "seq", "status", "at") == 3  # type: ignore[misc]
    result = await record(redis, PID, ["pending"])
    assert (result.previous_seq, result.emitted) == (-1, 1)
    await assert_keyspace(redis, {**payment_keys(), breaker_key(SUB): ("hash", NO_TTL)})
    assert len(await stream(redis)) == 2
    assert (await payment_deliveries(redis, PID, [SUB]))[0]["state"] == "delivered"


async def test_one_snapshot_per_transition_whatever_the_subscribers(
    redis: aioredis.Redis,
) -> None:
    """A transition two subscribers want stores its body once, compressed, referred to twice."""
    await record(redis, PID, ["pending"], subscribers=(SUB, OTHER_SUB))
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **line(OTHER_SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1),
            **job_entry(OTHER_SUB, T1, 1),
        },
    )
    stored = await redis.hgetall(snapshot_key(T1))  # type: ignore[misc]
    assert stored[b"refs"] == b"2" and set(stored) == {b"refs", b"z"}
    assert stored[b"z"].startswith(ZSTD_MAGIC) and len(stored[b"z"]) < len(body_of(PID, "pending"))
    assert decompress(stored[b"z"]) == body_of(PID, "pending")


async def test_holder_without_new_hint_drops_the_lock(redis: aioredis.Redis) -> None:
    """The lock holder with no hint pending: the lock is deleted and no fetch again."""
    await payment_store(redis).acquire(PID, "tok")
    result = await record(redis, PID, ["pending"], subscribers=(), holder="tok")
    assert result.fetch_again is False
    await assert_keyspace(redis, payment_keys())


async def test_hint_during_the_fetch_keeps_the_lock_for_one_more(redis: aioredis.Redis) -> None:
    """A hint that arrived during the fetch (dirty): fetch again, dirty dropped, lock renewed."""
    store = payment_store(redis)
    await store.acquire(PID, "tok")
    await store.acquire(PID, "tok-late")  # refused: marks the payment dirty
    await redis.pexpire(_lock_key(PID), 1_000)
    result = await record(redis, PID, ["pending"], subscribers=(), holder="tok")
    assert result.fetch_again is True
    await assert_keyspace(
        redis, {**payment_keys(), _lock_key(PID): ("string", ttl_ms(LOCK_TTL_MS))}
    )
    assert await redis.get(_lock_key(PID)) == b"tok"


async def test_lock_of_another_job_is_left_alone(redis: aioredis.Redis) -> None:
    """A caller that does not hold the lock records, but neither the lock nor dirty changes."""
    store = payment_store(redis)
    await store.acquire(PID, "tok-other")
    await store.acquire(PID, "tok-late")
    result = await record(redis, PID, ["pending"], subscribers=(), holder="tok")
    assert (result.emitted, result.fetch_again) == (1, False)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            _lock_key(PID): ("string", ttl_ms(LOCK_TTL_MS)),
            _dirty_key(PID): ("string", ttl_s(DIRTY_TTL_S)),
        },
    )
    assert await redis.get(_lock_key(PID)) == b"tok-other"


async def test_older_state_still_lets_the_lock_go(redis: aioredis.Redis) -> None:
    """Recording nothing new still drops the holder's lock."""
    await record(redis, PID, ["pending", "submitted"], subscribers=())
    await payment_store(redis).acquire(PID, "tok")
    result = await record(redis, PID, ["pending"], subscribers=(), holder="tok")
    assert (result.emitted, result.fetch_again) == (0, False)
    await assert_keyspace(redis, payment_keys())


async def test_hold_starts_the_head_for_the_caller(redis: aioredis.Redis) -> None:
    """With hold_ms the head is started for the caller; its job waits out the hold."""
    before = await server_ms(redis)
    result = await record(
        redis, PID, ["pending", "submitted"], caps={SUB: 4}, hold_ms=HOLD_MS, lease_ms=LEASE_MS
    )
    after = await server_ms(redis)
    job = deliver_job_id(SUB, T1, 1)
    assert result.started == (
        Acquired("ok", 0, body_of(PID, "pending"), 0, job, PID, "payment.pending", RECEIVED_MS),
    )
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1, T2]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1, HOLD_MS),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    queue = await zset(redis, QUEUE)
    assert before + HOLD_MS <= queue[job] <= after + HOLD_MS
    inflight = await zset(redis, inflight_key(SUB))
    assert before + LEASE_MS <= inflight[job] <= after + LEASE_MS


async def recheck_jobs(redis: aioredis.Redis, sub: str = SUB) -> dict[str, int]:
    """The subscriber's recheck wake jobs in the queue, by id (their due time)."""
    prefix = wake_job_id(sub, 0)[:-1]
    return {job: at for job, at in (await zset(redis, QUEUE)).items() if job.startswith(prefix)}


async def test_hold_over_the_cap_parks_the_head_behind_a_recheck(redis: aioredis.Redis) -> None:
    """With hold_ms at the cap the head is parked with no job (held job removed, gen bumped);
    the subscriber's one recheck wake job is due a lease later."""
    now = await server_ms(redis)
    busy = deliver_job_id(SUB, "msg_busy", 1)
    await redis.zadd(inflight_key(SUB), {busy: now + 3_600_000})
    result = await record(
        redis, PID, ["pending"], caps={SUB: 1}, hold_ms=HOLD_MS, lease_ms=LEASE_MS
    )
    assert result.started == ()
    [(recheck, at)] = (await recheck_jobs(redis)).items()
    after = await server_ms(redis)
    assert now + LEASE_MS <= at <= after + LEASE_MS and recheck == wake_job_id(SUB, at)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            job_key(recheck): ("string", job_ttl(LEASE_MS)),
            inflight_key(SUB): ("zset", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
            breaker_key(SUB): ("hash", NO_TTL),
        },
    )
    assert list(await zset(redis, QUEUE)) == [recheck]
    assert list(await zset(redis, waiting_key(SUB))) == [T1]
    assert await zset(redis, inflight_key(SUB)) == {busy: now + 3_600_000}
    assert await hash_of(redis, breaker_key(SUB)) == {"recheck_at": str(at)}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"


async def test_hold_with_breaker_open_parks_behind_the_cycles_wake_job(
    redis: aioredis.Redis,
) -> None:
    """With hold_ms and the breaker open the head is parked with no job; the cycle's one wake
    job is due at open_until plus jitter."""
    open_until = await server_ms(redis) + 3_600_000
    await redis.hset(breaker_key(SUB), mapping={"fails": 5, "open_until": open_until})  # type: ignore[misc]
    result = await record(
        redis,
        PID,
        ["pending"],
        caps={SUB: 4},
        hold_ms=HOLD_MS,
        lease_ms=LEASE_MS,
        open_jitter_ms=700,
    )
    assert result.started == ()
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            job_key(wake_job_id(SUB, open_until)): ("string", job_ttl(3_600_700)),
            breaker_key(SUB): ("hash", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
        },
    )
    assert await zset(redis, QUEUE) == {wake_job_id(SUB, open_until): open_until + 700}
    assert (await hash_of(redis, delivery_key(SUB, T1)))["gen"] == "2"


async def test_hold_while_another_job_probes_parks_with_no_job(
    redis: aioredis.Redis,
) -> None:
    """With hold_ms while another job probes, the head is parked with no job at all."""
    probe_until = await server_ms(redis) + 3_600_000
    await redis.hset(  # type: ignore[misc]
        breaker_key(SUB),
        mapping={"open_until": 1, "probe": "fdl:x:y:1", "probe_until": probe_until},
    )
    result = await record(
        redis, PID, ["pending"], caps={SUB: 4}, hold_ms=HOLD_MS, lease_ms=LEASE_MS
    )
    assert result.started == ()
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            breaker_key(SUB): ("hash", NO_TTL),
            waiting_key(SUB): ("zset", NO_TTL),
        },
    )
    assert list(await zset(redis, waiting_key(SUB))) == [T1]


async def test_hold_with_half_open_breaker_starts_the_probe(redis: aioredis.Redis) -> None:
    """With hold_ms and a half-open breaker nobody probes, the head is started as the probe."""
    now = await server_ms(redis)
    await redis.hset(breaker_key(SUB), mapping={"open_until": now - 1_000, "probe": ""})  # type: ignore[misc]
    result = await record(
        redis, PID, ["pending"], caps={SUB: 4}, hold_ms=HOLD_MS, lease_ms=LEASE_MS
    )
    job = deliver_job_id(SUB, T1, 1)
    assert [s.job_id for s in result.started] == [job]
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1, HOLD_MS),
            breaker_key(SUB): ("hash", NO_TTL),
            inflight_key(SUB): ("zset", NO_TTL),
        },
    )
    breaker = await hash_of(redis, breaker_key(SUB))
    assert breaker["probe"] == job
    assert now + LEASE_MS <= int(breaker["probe_until"]) <= now + LEASE_MS + 60_000


async def test_hold_starts_one_line_and_parks_another(redis: aioredis.Redis) -> None:
    """With hold_ms each line follows its own cap: one head started, the other parked."""
    now = await server_ms(redis)
    await redis.zadd(inflight_key(OTHER_SUB), {"fdl:crm:busy:1": now + 3_600_000})
    result = await record(
        redis,
        PID,
        ["pending"],
        subscribers=(SUB, OTHER_SUB),
        caps={SUB: 1, OTHER_SUB: 1},
        hold_ms=HOLD_MS,
        lease_ms=LEASE_MS,
    )
    assert [s.job_id for s in result.started] == [deliver_job_id(SUB, T1, 1)]
    [recheck] = await recheck_jobs(redis, OTHER_SUB)
    await assert_keyspace(
        redis,
        {
            **payment_keys(),
            **line(SUB, [T1]),
            **line(OTHER_SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1, HOLD_MS),
            job_key(recheck): ("string", job_ttl(LEASE_MS)),
            inflight_key(SUB): ("zset", NO_TTL),
            inflight_key(OTHER_SUB): ("zset", NO_TTL),
            waiting_key(OTHER_SUB): ("zset", NO_TTL),
            breaker_key(OTHER_SUB): ("hash", NO_TTL),
        },
    )


async def test_hold_without_a_cap_fails_halfway(redis: aioredis.Redis) -> None:
    """Today: hold_ms with no cap for a subscriber errors halfway, leaving writes behind."""
    # Not a contract: the script errors (nil cap) after its writes and Redis does not roll back,
    # so the state is left WITHOUT its TTL, the delivery and its job exist, nothing was started,
    # and the lock is not let go. The processor always passes a cap for every subscriber.
    await payment_store(redis).acquire(PID, "tok")
    with pytest.raises(ResponseError):
        await record(redis, PID, ["pending"], caps={}, hold_ms=HOLD_MS, lease_ms=LEASE_MS)
    await assert_keyspace(
        redis,
        {
            state_key(PID): ("hash", NO_TTL),
            TRANSITIONS_LOG_KEY: ("stream", NO_TTL),
            **line(SUB, [T1]),
            QUEUE: ("zset", NO_TTL),
            **job_entry(SUB, T1, 1, HOLD_MS),
            _lock_key(PID): ("string", ttl_ms(LOCK_TTL_MS)),
        },
    )
    assert await redis.hget(state_key(PID), "seq") == b"1"  # type: ignore[misc]
