"""STORE_EVENT, run through ``EventStore.store``: the event's field in its payment's event hash
(dedupe marker and compressed raw archive), arq job and queue entry written together, or nothing
at all for a duplicate."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from service.api.ingest.sources.base import VerifiedEvent
from service.domain.events import event_digest
from service.store.compression import ZSTD_MAGIC, decompress
from service.store.events import EventStore, StoreResult, read_raw_record
from service.store.layout import (
    ARQ_EXPIRES_EXTRA_MS,
    ARQ_JOB_PREFIX,
    PROCESS_EVENT,
    event_field,
    event_job_id,
    event_key,
)
from tests.store.lua.keyspace import (
    NO_TTL,
    Expected,
    assert_keyspace,
    job_body,
    ttl_ms,
    ttl_s,
    zset,
)
from tests.store.lua.staging import QUEUE, RECEIVED_MS

DEDUPE_TTL_S = 345_600
RAW_TTL_S = 7_200
SOURCE = "kartapay"
HEADERS = {"content-type": "application/json", "webhook-signature": "v1,c2lnbmF0dXJl"}


@pytest.fixture
async def store(redis: aioredis.Redis) -> AsyncIterator[EventStore]:
    events = EventStore(
        redis, queue_name=QUEUE, dedupe_ttl_s=DEDUPE_TTL_S, raw_ttl_s=RAW_TTL_S, timeout_s=5
    )
    try:
        yield events
    finally:
        await events.close()


def event(
    event_id: str = "evt_1", payment_id: str = "pay_1", at: int = RECEIVED_MS
) -> VerifiedEvent:
    return VerifiedEvent(SOURCE, event_id, payment_id, at, b'{"id": "%s"}' % event_id.encode())


def stored_keys(event_id: str, payment_id: str = "pay_1") -> Expected:
    """The keys of one stored event (the queue is shared): its payment's event hash, which
    lives the longer of the dedupe window and the raw retention, and its job."""
    job_id = event_job_id(SOURCE, event_id)
    return {
        event_key(payment_id): ("hash", ttl_s(max(DEDUPE_TTL_S, RAW_TTL_S))),
        ARQ_JOB_PREFIX + job_id: ("string", ttl_ms(ARQ_EXPIRES_EXTRA_MS)),
    }


async def stored(redis: aioredis.Redis, event_id: str, payment_id: str = "pay_1") -> bytes | None:
    """The stored value of an event: its field in its payment's event hash."""
    value: bytes | None = await redis.hget(event_key(payment_id), event_field(SOURCE, event_id))  # type: ignore[misc]
    return value


async def test_new_event_writes_event_key_job_and_queue(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """A new event is stored: one field of its payment's event hash (the compressed raw record),
    arq job, queue entry."""
    assert await store.store(event(), HEADERS) is StoreResult.STORED
    job_id = event_job_id(SOURCE, "evt_1")
    await assert_keyspace(redis, {**stored_keys("evt_1"), QUEUE: ("zset", NO_TTL)})
    assert await redis.hkeys(event_key("pay_1")) == [event_field(SOURCE, "evt_1").encode()]  # type: ignore[misc]
    value = await stored(redis, "evt_1")
    assert value is not None and value.startswith(ZSTD_MAGIC)
    assert await zset(redis, QUEUE) == {job_id: RECEIVED_MS}
    assert await job_body(redis, ARQ_JOB_PREFIX + job_id) == {
        "t": None,
        "f": PROCESS_EVENT,
        "a": [
            {
                "source": SOURCE,
                "event_id": "evt_1",
                "payment_id": "pay_1",
                "received_at_ms": RECEIVED_MS,
                "attempt": 0,
            }
        ],
        "k": {},
        "et": RECEIVED_MS,
    }


async def test_raw_archive_keeps_body_without_signature(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """The raw archive holds the body and metadata, and not the signature header (nor the
    payment id: the hash's key names it)."""
    await store.store(event(), HEADERS)
    raw = await stored(redis, "evt_1")
    assert raw is not None
    assert read_raw_record(raw) == {
        "source": SOURCE,
        "event_id": "evt_1",
        "received_at_ms": RECEIVED_MS,
        "headers": {"content-type": "application/json"},
        "body": '{"id": "evt_1"}',
    }


async def test_duplicate_writes_nothing(redis: aioredis.Redis, store: EventStore) -> None:
    """A second copy of an event is a duplicate: no key changes, the queue keeps one entry."""
    await store.store(event(), HEADERS)
    before_raw = await stored(redis, "evt_1")
    later = event(at=RECEIVED_MS + 5_000)._replace(body=b'{"other": true}')
    assert await store.store(later, HEADERS) is StoreResult.DUPLICATE
    await assert_keyspace(redis, {**stored_keys("evt_1"), QUEUE: ("zset", NO_TTL)})
    assert await zset(redis, QUEUE) == {event_job_id(SOURCE, "evt_1"): RECEIVED_MS}
    assert await stored(redis, "evt_1") == before_raw


async def test_duplicate_after_job_ran_is_not_enqueued_again(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """A duplicate that arrives after its job ran (job and queue entry gone) enqueues nothing."""
    await store.store(event(), HEADERS)
    job_id = event_job_id(SOURCE, "evt_1")
    await redis.delete(ARQ_JOB_PREFIX + job_id)
    await redis.zrem(QUEUE, job_id)
    assert await store.store(event(), HEADERS) is StoreResult.DUPLICATE
    keys = stored_keys("evt_1")
    del keys[ARQ_JOB_PREFIX + job_id]
    await assert_keyspace(redis, keys)


async def test_event_whose_dedupe_expired_is_stored_again(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """Once its payment's event hash is gone an event is stored again: same job id, one queue
    entry."""
    await store.store(event(), HEADERS)
    await redis.delete(event_key("pay_1"))
    again = RECEIVED_MS + 60_000
    assert await store.store(event(at=again), HEADERS) is StoreResult.STORED
    job_id = event_job_id(SOURCE, "evt_1")
    await assert_keyspace(redis, {**stored_keys("evt_1"), QUEUE: ("zset", NO_TTL)})
    assert await zset(redis, QUEUE) == {job_id: again}
    assert (await job_body(redis, ARQ_JOB_PREFIX + job_id))["et"] == again


async def test_events_of_one_payment_share_its_hash(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """Two events of one payment are two fields of its one event hash, two jobs and two queue
    entries; a duplicate leaves the hash's TTL alone, a new event pushes it back."""
    assert await store.store(event("evt_1"), HEADERS) is StoreResult.STORED
    await redis.expire(event_key("pay_1"), 100)
    assert await store.store(event("evt_1"), HEADERS) is StoreResult.DUPLICATE
    assert 0 < await redis.ttl(event_key("pay_1")) <= 100
    assert await store.store(event("evt_2", at=RECEIVED_MS + 1), HEADERS) is StoreResult.STORED
    await assert_keyspace(
        redis, {**stored_keys("evt_1"), **stored_keys("evt_2"), QUEUE: ("zset", NO_TTL)}
    )
    assert await redis.hlen(event_key("pay_1")) == 2  # type: ignore[misc]
    assert await zset(redis, QUEUE) == {
        event_job_id(SOURCE, "evt_1"): RECEIVED_MS,
        event_job_id(SOURCE, "evt_2"): RECEIVED_MS + 1,
    }


async def test_events_of_two_payments_get_a_hash_each(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """Events of two payments are kept in two hashes, one per payment."""
    assert await store.store(event("evt_1", "pay_1"), HEADERS) is StoreResult.STORED
    assert await store.store(event("evt_2", "pay_2"), HEADERS) is StoreResult.STORED
    await assert_keyspace(
        redis,
        {**stored_keys("evt_1", "pay_1"), **stored_keys("evt_2", "pay_2"), QUEUE: ("zset", NO_TTL)},
    )
    assert read_raw_record(await stored(redis, "evt_2", "pay_2") or b"")["event_id"] == "evt_2"


@pytest.mark.parametrize(
    "payment_id",
    ["", "pay 1", "pay%d%b\r\n*3\r\n", "pä€y😀", "x" * 256, "pay:1:state", "{payment_id}"],
)
async def test_any_payment_id_a_source_accepts_names_its_own_hash(
    redis: aioredis.Redis, store: EventStore, payment_id: str
) -> None:
    """The command is well formed for any payment id (empty, spaces, %, CRLF, RESP, non-ASCII,
    the longest a source accepts): the event is stored under exactly that payment's hash."""
    assert await store.store(event("evt_1", payment_id), HEADERS) is StoreResult.STORED
    await assert_keyspace(redis, {**stored_keys("evt_1", payment_id), QUEUE: ("zset", NO_TTL)})
    record = read_raw_record(await stored(redis, "evt_1", payment_id) or b"")
    assert record["event_id"] == "evt_1" and record["body"] == '{"id": "evt_1"}'
    assert await store.store(event("evt_1", payment_id), HEADERS) is StoreResult.DUPLICATE


async def test_a_payments_event_hash_is_a_compact_listpack(
    redis: aioredis.Redis, store: EventStore
) -> None:
    """With the setting every Redis of kartahook gets, a payment's five events, each record
    well over Redis's default 64 B, stay one listpack (the memory budget,
    docs/decisions/event-hash.md)."""
    rng = random.Random(14)
    for n in range(5):
        body = orjson.dumps({"data": {"id": "pay_1", "ref": rng.randbytes(200).hex()}})
        await store.store(event(f"evt_{n}")._replace(body=body), HEADERS)
        assert 64 < len(await stored(redis, f"evt_{n}") or b"") <= 1024
    assert await redis.object("encoding", event_key("pay_1")) == b"listpack"


async def test_script_reloaded_after_script_flush(redis: aioredis.Redis, store: EventStore) -> None:
    """After Redis forgets its scripts, the store loads it again and the event is stored whole."""
    await store.store(event("evt_1"), HEADERS)
    await redis.script_flush()
    assert await store.store(event("evt_2"), HEADERS) is StoreResult.STORED
    await assert_keyspace(
        redis, {**stored_keys("evt_1"), **stored_keys("evt_2"), QUEUE: ("zset", NO_TTL)}
    )


async def test_binary_body_is_archived_as_it_came(redis: aioredis.Redis, store: EventStore) -> None:
    """A body that is not UTF-8 is archived byte for byte and read back as body_b64."""
    raw_body = b"\xff\xfe\n not utf-8 \x00"
    await store.store(event()._replace(body=raw_body), HEADERS)
    value = await stored(redis, "evt_1")
    assert value is not None
    assert decompress(value).endswith(b"\n" + raw_body)
    record = read_raw_record(value)
    assert base64.b64decode(str(record["body_b64"])) == raw_body and "body" not in record


def test_records_of_older_releases_still_read() -> None:
    """A whole-JSON record, uncompressed (as written before), reads as it was."""
    old = {"source": SOURCE, "event_id": "evt_0", "received_at_ms": 1, "headers": {}, "body": "{}"}
    assert read_raw_record(orjson.dumps(old)) == old


@pytest.mark.parametrize("event_id", ["evt_1", "evt_2", "msg_é", "x" * 256])
def test_an_events_field_is_its_digests_first_64_bits_as_a_redis_integer(event_id: str) -> None:
    """The field is the digest's first 16 hex characters as a signed 64-bit integer in
    canonical decimal form (what a listpack stores as an integer, 10 bytes)."""
    field = event_field(SOURCE, event_id)
    number = int(field)
    assert -(1 << 63) <= number < 1 << 63 and str(number) == field
    assert number % (1 << 64) == int(event_digest(SOURCE, event_id)[:16], 16)
