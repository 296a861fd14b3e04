"""The embedded redis-server: its fsync policy, and what survives a SIGKILL with AOF."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.store.server import RedisServer


async def test_appendfsync_always_keeps_an_acknowledged_write_through_sigkill(
    tmp_path: Path,
) -> None:
    """With ``appendfsync always`` Redis runs with that policy, and a write it answered is still
    there after a SIGKILL and a restart on the same port and data directory."""
    server = RedisServer(tmp_path, appendfsync="always").start()
    try:
        client = aioredis.from_url(server.url)
        try:
            assert (await client.config_get("appendfsync"))["appendfsync"] == "always"
            await client.set("acknowledged", "yes")
        finally:
            await client.aclose()
        pid = server.process.pid if server.process else None
        server.stop(kill=True)
        assert server.process is not None and server.process.returncode == -9
        server.start()
        assert server.process.pid != pid
        client = aioredis.from_url(server.url)
        try:
            assert await client.get("acknowledged") == b"yes"
        finally:
            await client.aclose()
    finally:
        server.stop()


def test_the_default_policy_is_everysec_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    """``everysec`` stays a bare RedisServer's default; a policy Redis lacks is a ValueError."""
    assert RedisServer(tmp_path).appendfsync == "everysec"
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServer(tmp_path, appendfsync="sometimes")


def test_a_leftover_server_is_found_by_its_pidfile_and_stopped_not_doubled(
    tmp_path: Path,
) -> None:
    """A server whose owner forgot it (a SIGKILLed `kartahook run`) is stopped by the next
    start on the same data directory; a pidfile naming another process, or a redis-server of
    another directory, is not taken for one."""
    import os

    from service.store.server import PIDFILE, leftover_server

    data, other = tmp_path / "data", tmp_path / "other"
    forgotten = RedisServer(data).start()
    second: RedisServer | None = None
    try:
        assert forgotten.process is not None
        assert leftover_server(data) == forgotten.process.pid
        other.mkdir()
        (other / PIDFILE).write_text(f"{forgotten.process.pid}\n")
        assert leftover_server(other) is None  # a redis-server, but of another directory
        (other / PIDFILE).write_text(f"{os.getpid()}\n")
        assert leftover_server(other) is None  # a live pid, but not a redis-server
        second = RedisServer(data).start()
        assert second.replaced == forgotten.process.pid
        assert forgotten.process.wait(timeout=10) == 0  # SIGTERM: a clean shutdown
        assert second.process is not None and leftover_server(data) == second.process.pid
    finally:
        forgotten.stop()
        if second is not None:
            second.stop()
    assert not (data / PIDFILE).exists()
