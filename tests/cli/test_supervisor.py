"""Supervisor's crash and restart of a child (what the chaos test does to the service)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from kartahook.supervisor import ChildSpec, Supervisor, http_ok
from service.store.server import free_port


async def test_kill_then_restart_brings_the_child_back_on_the_same_port(tmp_path: Path) -> None:
    """kill SIGKILLs a child and waits for it; restart runs the same command (same port) in its
    place in the stop order, appending to its log; restarting a running child is refused."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    supervisor = Supervisor(tmp_path / "log", grace_s=5.0)
    stop = asyncio.Event()
    first = supervisor.start(ChildSpec("web", argv, {}, http_ok(url), 30.0))
    after = supervisor.start(
        ChildSpec("after", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    )
    try:
        assert await supervisor.wait_ready(first, stop)
        with pytest.raises(RuntimeError, match="still running"):
            supervisor.restart("web")
        killed = await supervisor.kill("web")
        assert killed.process.returncode == -9
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
        again = supervisor.restart("web")
        assert await supervisor.wait_ready(again, stop)
        assert again.pid != first.pid and again.exited() is None
        assert [c.name for c in supervisor.children] == ["web", "after"]
        assert supervisor.children[0] is again and supervisor.children[1] is after
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
    finally:
        await supervisor.stop_all(lambda _: None)
    assert again.exited() is not None and after.exited() is not None
