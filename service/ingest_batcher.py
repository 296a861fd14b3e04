"""Coalesce the Redis script calls of concurrent requests into one pipelined round trip.

Each request calls :meth:`ScriptBatcher.call` and awaits its own result. Calls that arrive
while a pipeline is in flight wait for the next one, so under load each round trip to Redis
carries many requests' writes, and at low load a call goes out on the next loop iteration.
Every call still gets its own answer: a 2xx is only sent after Redis confirmed that write.

Scripts go out as ``EVALSHA``; after a ``NOSCRIPT`` (Redis restarted or flushed its script
cache) the script is loaded and only those calls are sent again. Nothing ran for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from service import metrics

Arg = str | bytes | int


class RedisUnavailable(Exception):
    """Redis could not take a write in time; the caller answers 503."""


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script and its SHA1, as ``EVALSHA`` wants it."""

    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


_Call = tuple[LuaScript, Sequence[Arg], Sequence[Arg], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Pipelines concurrent ``EVALSHA`` calls: up to ``max_batch`` per round trip, one in flight."""

    def __init__(self, client: aioredis.Redis, *, timeout_s: float, max_batch: int = 256) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._runner: asyncio.Task[None] | None = None
        self._shas: dict[str, str] = {}

    async def call(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` with ``keys`` and ``args`` in the next pipeline; its reply.

        Raises :class:`RedisUnavailable` when Redis fails or the deadline passes.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(self._timeout_s):
                return await future
        except TimeoutError as exc:
            raise RedisUnavailable("redis write timed out") from exc

    async def close(self) -> None:
        """Wait for the writes already handed over."""
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                metrics.REDIS_BATCH_SIZE.observe(len(batch))
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await self._send(batch, reload=True)
                except Exception as exc:  # connection errors, timeouts: the whole batch failed
                    failure = RedisUnavailable(f"redis write failed: {type(exc).__name__}")
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(failure)
        finally:
            self._runner = None

    async def _send(self, batch: list[_Call], *, reload: bool) -> None:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]
        replies = await pipe.execute(raise_on_error=False)
        missing: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            future = call[3]
            if isinstance(reply, NoScriptError) and reload:
                missing.append(call)
            elif future.done():
                continue
            elif isinstance(reply, Exception):
                future.set_exception(RedisUnavailable(f"redis error: {reply}"))
            else:
                future.set_result(reply)
        if missing:
            for source in {call[0].source for call in missing}:
                await self._client.script_load(source)
            await self._send(missing, reload=False)
