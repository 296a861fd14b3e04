"""The batcher's ``WAIT`` handling (``KARTAHOOK_REDIS_MIN_REPLICAS``) and its ``READONLY``
handling, against a scripted RESP server on 127.0.0.1 that records every command it gets and
answers ``WAIT`` with as many replicas as the test says (a real Redis cannot be told to report
a given replica count)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from service import metrics
from service.store.batcher import NotReplicated, RedisUnavailable, ScriptBatcher
from service.store.events import STORE_EVENT
from tests.support import wait_for


@dataclass
class ScriptedRedis:
    """A RESP server: ``EVALSHA`` answers ``evalsha_reply``, ``WAIT`` answers ``replicas``,
    everything else ``+OK``. ``commands`` holds every command (name upper-cased, then args)
    and ``connections`` counts the connections made."""

    replicas: int = 1
    evalsha_reply: bytes = b":1\r\n"
    wait_delay_s: float = 0.0
    commands: list[list[bytes]] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                header = await reader.readline()
                if not header:
                    return
                assert header.startswith(b"*"), header
                command = []
                for _ in range(int(header[1:])):
                    length = int((await reader.readline())[1:])
                    command.append((await reader.readexactly(length + 2))[:-2])
                command[0] = command[0].upper()
                self.commands.append(command)
                if command[0] == b"EVALSHA":
                    writer.write(self.evalsha_reply)
                elif command[0] == b"WAIT":
                    if self.wait_delay_s:
                        await asyncio.sleep(self.wait_delay_s)
                    writer.write(b":%d\r\n" % self.replicas)
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def names(self) -> list[bytes]:
        """The names of the commands that matter here (not the connection's handshake)."""
        return [c[0] for c in self.commands if c[0] in (b"EVALSHA", b"WAIT")]


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedRedis, aioredis.Redis]]:
    """A scripted RESP server and a redis-py client of it."""
    fake = ScriptedRedis()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        yield fake, client
    finally:
        await client.aclose()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def call_all(batcher: ScriptBatcher, count: int) -> list[object]:
    """``count`` calls handed over in one loop turn (one batch); their results or errors."""
    return await asyncio.gather(
        *(batcher.call(STORE_EVENT, [f"k{i}"], [i]) for i in range(count)), return_exceptions=True
    )


async def test_no_wait_is_sent_without_min_replicas(
    scripted: tuple[ScriptedRedis, aioredis.Redis],
) -> None:
    """min_replicas 0: the batch is its EVALSHAs only, answered as Redis replied."""
    fake, client = scripted
    batcher = ScriptBatcher(client, timeout_s=2)
    try:
        assert await call_all(batcher, 3) == [1, 1, 1]
    finally:
        await batcher.close()
    assert fake.names() == [b"EVALSHA"] * 3


async def test_one_wait_follows_each_batch_and_releases_it(
    scripted: tuple[ScriptedRedis, aioredis.Redis],
) -> None:
    """min_replicas 1: three concurrent calls go out as three EVALSHAs and ONE WAIT 1 <ms> on
    the same connection; enough replicas, so each caller gets its own reply."""
    fake, client = scripted
    batcher = ScriptBatcher(client, timeout_s=2, min_replicas=1, wait_timeout_ms=250)
    try:
        assert await call_all(batcher, 3) == [1, 1, 1]
        assert await call_all(batcher, 2) == [1, 1]
    finally:
        await batcher.close()
    assert fake.names() == [b"EVALSHA"] * 3 + [b"WAIT"] + [b"EVALSHA"] * 2 + [b"WAIT"]
    waits = [c for c in fake.commands if c[0] == b"WAIT"]
    assert waits == [[b"WAIT", b"1", b"250"]] * 2
    assert fake.connections == 1


async def test_replies_are_held_until_wait_answers(
    scripted: tuple[ScriptedRedis, aioredis.Redis],
) -> None:
    """The EVALSHA replies come at once, but no caller is answered before WAIT's reply."""
    fake, client = scripted
    fake.wait_delay_s = 0.3
    batcher = ScriptBatcher(client, timeout_s=2, min_replicas=1, wait_timeout_ms=250)
    try:
        task = asyncio.ensure_future(batcher.call(STORE_EVENT, ["k"], [1]))

        async def waiting() -> bool:
            return b"WAIT" in fake.names()

        await wait_for(waiting, interval_s=0.005)
        assert not task.done(), "answered before WAIT replied"
        assert await task == 1
    finally:
        await batcher.close()


async def test_too_few_replicas_fail_every_call_of_the_batch(
    scripted: tuple[ScriptedRedis, aioredis.Redis],
) -> None:
    """WAIT reports fewer replicas than required: every call of the batch raises NotReplicated
    (a RedisUnavailable, so 503), the short batch is counted, and the connection stays."""
    fake, client = scripted
    fake.replicas = 1
    before = metrics.REGISTRY.get_sample_value("kartahook_ingest_wait_short_total") or 0.0
    batcher = ScriptBatcher(client, timeout_s=2, min_replicas=2, wait_timeout_ms=100)
    try:
        results = await call_all(batcher, 3)
        assert all(isinstance(r, NotReplicated) for r in results), results
        assert all(isinstance(r, RedisUnavailable) for r in results)
        assert "1 of 2 replicas acknowledged the write within 100 ms" in str(results[0])
        fake.replicas = 2
        assert await call_all(batcher, 1) == [1]
    finally:
        await batcher.close()
    after = metrics.REGISTRY.get_sample_value("kartahook_ingest_wait_short_total") or 0.0
    assert after - before == 1
    assert fake.connections == 1


async def test_readonly_reply_drops_the_connection(
    scripted: tuple[ScriptedRedis, aioredis.Redis],
) -> None:
    """A READONLY reply (a demoted primary) fails the call and the connection is dropped: the
    next batch connects again (through the Sentinels, with a Sentinel URL)."""
    fake, client = scripted
    fake.evalsha_reply = b"-READONLY You can't write against a read only replica.\r\n"
    batcher = ScriptBatcher(client, timeout_s=2)
    try:
        (result,) = await call_all(batcher, 1)
        assert isinstance(result, RedisUnavailable), result
        fake.evalsha_reply = b":1\r\n"
        assert await call_all(batcher, 1) == [1]
    finally:
        await batcher.close()
    assert fake.connections == 2
