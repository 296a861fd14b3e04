"""Coalesce the Redis script calls of concurrent requests into pipelined writes on one connection.

Each request calls :meth:`ScriptBatcher.call` and awaits its own reply: a 2xx is only sent after
Redis confirmed that write. Calls made during one turn of the event loop go out together in one
socket write of ``EVALSHA`` commands; the next batch may be sent before the previous replies are
back (Redis answers in order), and a reader task hands each reply to its caller.

Why not redis-py's ``Pipeline``: every ``execute()`` checks a connection out of the pool, which
in redis-py 5.3 takes a lock and polls the socket with ``timeout(0)`` (one more event-loop turn),
and with ``socket_timeout`` set each send runs in a task of its own. Here one dedicated
connection (made by the client's pool, so URL, auth, TLS and Sentinel settings apply) is kept,
commands are packed once, and deadlines are ``asyncio.timeout`` scopes.

Scripts are :class:`service.store.scripts.Script` (the one runner; this is its pipelined path).
After ``NOSCRIPT`` (Redis restarted or flushed its script cache) the script is loaded and the
call sent again; nothing ran for it. On any connection error or timeout every call in flight
fails with :class:`RedisUnavailable` (503), and the next batch reconnects.

Replicas (``min_replicas`` > 0, ``KARTAHOOK_REDIS_MIN_REPLICAS``): the ``EVALSHA`` commands of
each batch are followed by ONE ``WAIT min_replicas wait_timeout_ms`` on the same connection.
``WAIT`` covers every write sent before it on that connection, so one per batch is enough; the
replies of the batch are held and handed to their callers only once ``WAIT`` reports at least
``min_replicas`` replicas. Fewer, and every call of the batch fails with
:class:`NotReplicated` (a :class:`RedisUnavailable`: 503, nothing acknowledged; the write may be
on the primary, so the provider's retry is answered as a duplicate). With ``min_replicas`` 0 no
``WAIT`` is sent and nothing is held.

Failover: the dedicated connection is made by the client's pool's connection class, so with a
``redis+sentinel://`` URL each (re)connection asks the Sentinels for the primary. A ``READONLY``
reply (the primary was demoted to a replica under us) drops the connection like an I/O error:
every call in flight fails and the next batch reconnects through the Sentinels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from service import metrics

# Defined in service.errors (the error tree), re-exported here.
from service.errors import NotReplicated as NotReplicated
from service.errors import RedisUnavailable as RedisUnavailable
from service.store.scripts import Script

Arg = str | bytes | int


def bulk_string(data: bytes) -> bytes:
    """One bulk string of the Redis protocol (RESP)."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack_command(*args: Arg) -> bytes:
    """One command in the Redis protocol (RESP), packed by hiredis (as every client's commands
    are: ``service.store.client.HiredisPacking``)."""
    # hiredis's stub types the tuple as of one item; it takes any number.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


def parsed_replies(conn: AbstractConnection) -> Any | None:
    """The connection's hiredis reader when redis-py parses replies with one, else None.

    A reply already read from the socket can be taken from it with one ``gets()`` (the parser's
    ``read_response`` does the same behind two coroutine calls). The reader is a private
    attribute of redis-py's parser: when it is not found (another parser, another redis-py),
    every reply goes through ``read_response``.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if isinstance(parser, _AsyncHiredisParser) and reader is not None and hasattr(reader, "gets"):
        return reader
    return None


_NO_REPLY: Any = object()


@dataclass(slots=True)
class _Call:
    script: Script
    command: bytes
    future: asyncio.Future[Any]
    deadline: float
    reloaded: bool = False
    # With WAIT: the reply, held until the batch's WAIT answers (_NO_REPLY until it came).
    reply: Any = _NO_REPLY


@dataclass(slots=True)
class _Wait:
    """The ``WAIT`` that ends a batch, in flight like a call: its reply releases ``calls``."""

    calls: list[_Call]
    deadline: float


class ScriptBatcher:
    """Pipelines concurrent ``EVALSHA`` calls over one dedicated connection."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout_s: float,
        max_batch: int = 1024,
        min_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        if min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        self._client = client
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._wait_command = pack_command("WAIT", min_replicas, wait_timeout_ms)
        self._pending: list[_Call] = []
        self._in_flight: deque[_Call | _Wait] = deque()
        self._wake = asyncio.Event()
        self._replies_due = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the sender task's
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    async def call(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` with ``keys`` and ``args`` in the next batch; its reply.

        Raises :class:`RedisUnavailable` when Redis fails or the deadline passes.
        """
        return await self.send(script, pack_command("EVALSHA", script.sha, len(keys), *keys, *args))

    def send(self, script: Script, command: bytes) -> asyncio.Future[Any]:
        """Like :meth:`call`, with the ``EVALSHA`` of ``script`` already packed (RESP): hand it
        to the next batch and return the future of its reply (a plain function, so the hot path
        awaits one coroutine fewer).
        """
        # The loop of the sender task, once there is one: on Python 3.11 every
        # asyncio.get_running_loop() costs a getpid() system call.
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(RedisUnavailable("ingestion is shutting down"))
            return future
        self._submit(_Call(script, command, future, loop.time() + self._timeout_s))
        # The deadline is enforced by the watchdog (one timer for all calls, not one per call).
        return future

    def _submit(self, call: _Call) -> None:
        self._pending.append(call)
        self._wake.set()
        if self._sender is None:
            self._loop = asyncio.get_running_loop()
            self._sender = asyncio.create_task(self._send_loop())
            self._watchdog = asyncio.create_task(self._watch_deadlines())

    async def close(self) -> None:
        """Let the calls already handed over finish, then drop the connection."""
        self._closed = True
        waiting = {call.future for call in self._pending}
        for item in self._in_flight:  # a WAIT's calls include those whose replies it holds
            waiting.update(
                call.future for call in (item.calls if isinstance(item, _Wait) else [item])
            )
        if waiting:
            await asyncio.wait(waiting, timeout=self._timeout_s * 2)
        for task in (self._sender, self._reader, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None

    async def _connection(self) -> AbstractConnection:
        if self._conn is None:
            pool = self._client.connection_pool
            # No socket_timeout on this connection: deadlines are asyncio.timeout scopes, and
            # redis-py would otherwise run every send in a task of its own.
            conn: AbstractConnection = pool.connection_class(
                **{**pool.connection_kwargs, "socket_timeout": None}
            )
            async with asyncio.timeout(self._timeout_s):
                await conn.connect()  # type: ignore[no-untyped-call]
            self._conn = conn
            self._reader = asyncio.create_task(self._read_loop(conn))
        return self._conn

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                batch = [call for call in batch if not call.future.done()]
                if not batch:
                    continue
                metrics.REDIS_BATCH_SIZE.observe(len(batch))
                commands = [call.command for call in batch]
                try:
                    conn = await self._connection()
                    self._in_flight.extend(batch)
                    if self.min_replicas:
                        for call in batch:
                            call.reply = _NO_REPLY
                        self._in_flight.append(_Wait(batch, max(c.deadline for c in batch)))
                        commands.append(self._wait_command)
                    self._replies_due.set()
                    await conn.send_packed_command(commands, check_health=False)
                except Exception as exc:
                    self._fail(batch, exc)
                    self._broken(exc)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        parsed = parsed_replies(conn)
        try:
            while True:
                if not self._in_flight:
                    self._replies_due.clear()
                    await self._replies_due.wait()
                    continue
                try:
                    reply = await conn.read_response(disconnect_on_error=False)
                except ResponseError as exc:
                    reply = exc
                self._resolve(reply)
                if parsed is not None:
                    self._resolve_parsed(parsed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._conn is conn:
                self._broken(exc)

    def _resolve(self, reply: Any) -> None:
        """Hand ``reply`` (a :class:`ResponseError` for an error reply) to the oldest call (held
        until its batch's ``WAIT`` answers, when there is one), or release a batch on ``WAIT``'s
        reply. Raises for ``READONLY``: the connection is to a demoted primary."""
        call = self._in_flight.popleft()
        if isinstance(reply, ResponseError):
            self._error_reply(call, reply)
        elif self.min_replicas:  # (the path without replicas checks only this)
            if isinstance(call, _Wait):
                self._released(call, reply)
            else:
                call.reply = reply
        # Without replicas there is no WAIT in flight: ``call`` is a _Call (no check, hot path).
        elif not call.future.done():  # type: ignore[union-attr]
            call.future.set_result(reply)  # type: ignore[union-attr]

    def _released(self, wait: _Wait, reply: Any) -> None:
        """``WAIT`` answered ``reply`` for ``wait``'s batch: hand over the held replies when
        enough replicas have the writes, else fail every call of the batch."""
        replicas = reply if isinstance(reply, int) else -1
        if replicas >= self.min_replicas:
            for call in wait.calls:
                if call.reply is not _NO_REPLY and not call.future.done():
                    call.future.set_result(call.reply)
            return
        metrics.REDIS_WAIT_SHORT.inc()
        if isinstance(reply, ResponseError):
            detail = f"WAIT failed: {reply}"
        else:
            detail = (
                f"{replicas} of {self.min_replicas} replicas acknowledged the write within "
                f"{self.wait_timeout_ms} ms"
            )
        failure = NotReplicated(detail)
        for call in wait.calls:
            # A call without its reply was sent again (NOSCRIPT) and waits for a later WAIT.
            if call.reply is not _NO_REPLY and not call.future.done():
                call.future.set_exception(failure)

    def _resolve_parsed(self, reader: Any) -> None:
        """Hand over every reply that already arrived, without an await each: the bytes of a
        batch's replies come in a few reads, and ``read_response`` returns one reply per call.
        Raises as ``read_response`` would for a reply that means the connection is unusable."""
        while self._in_flight:
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA:
                return
            if isinstance(reply, RedisConnectionError):
                raise reply
            self._resolve(reply)

    async def _watch_deadlines(self) -> None:
        """Fail calls past their deadline; a call in flight past it means Redis is stuck, so the
        connection is dropped (which also ends a blocked read or send)."""
        loop = asyncio.get_running_loop()
        interval = max(self._timeout_s / 10, 0.005)
        expired = RedisUnavailable("redis write timed out")
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for call in self._pending:
                if call.deadline <= now and not call.future.done():
                    call.future.set_exception(expired)
            if self._in_flight and self._in_flight[0].deadline <= now:
                self._broken(expired)

    def _error_reply(self, call: _Call | _Wait, exc: ResponseError) -> None:
        if isinstance(exc, ReadOnlyError):
            # A demoted primary: nothing more on this connection can succeed; the read loop
            # drops it (failing everything in flight) and the next batch connects again.
            self._fail([call], exc)
            raise RedisConnectionError("READONLY: the primary was demoted to a replica")
        if isinstance(call, _Wait):
            self._released(call, exc)
        elif isinstance(exc, NoScriptError) and not call.reloaded and not call.future.done():
            call.reloaded = True
            self._spawn(self._reload_and_resend(call))
        elif not call.future.done():
            call.future.set_exception(RedisUnavailable(f"redis error: {exc}"))

    async def _reload_and_resend(self, call: _Call) -> None:
        try:
            await self._client.script_load(call.script.source)
        except Exception as exc:
            self._fail([call], exc)
            return
        self._submit(call)

    def _fail(self, calls: Sequence[_Call | _Wait], exc: BaseException) -> None:
        failure = RedisUnavailable(f"redis write failed: {type(exc).__name__}")
        for item in calls:
            # A WAIT's calls: those whose reply came are held by it, and fail with it.
            for call in item.calls if isinstance(item, _Wait) else (item,):
                if not call.future.done():
                    call.future.set_exception(failure)

    def _broken(self, exc: BaseException) -> None:
        """The connection is unusable: fail everything in flight and reconnect next time."""
        in_flight = list(self._in_flight)
        self._in_flight.clear()
        self._fail(in_flight, exc)
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if conn is not None:
            self._spawn(conn.disconnect(nowait=True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def run_script(
    script: Script,
    redis: aioredis.Redis,
    batcher: ScriptBatcher | None,
    keys: Sequence[Arg],
    args: Sequence[Arg],
) -> Any:
    """``script``'s reply, through ``batcher`` when there is one (pipelined with the calls of
    concurrent jobs; :class:`RedisUnavailable` when Redis fails or the deadline passes), else
    as one call on ``redis`` (redis-py's errors)."""
    if batcher is not None:
        return await batcher.call(script, keys, args)
    return await script(redis, keys, args)
