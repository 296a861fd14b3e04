"""Child processes for ``kartahook run``: start, wait until ready, watch, stop in reverse order.

Each child runs in a session of its own, so a terminal's Ctrl-C reaches only the supervisor,
which then stops the children one by one, last started first: SIGTERM, a grace period, then
SIGKILL. On Linux each child also gets SIGTERM if the supervisor dies without cleaning up
(``PR_SET_PDEATHSIG``), so no child outlives it. Output goes to one log file per child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ReadyCheck = Callable[[], Awaitable[bool]]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    """Ask Linux to send SIGTERM to this process when its parent dies."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_exit(returncode: int) -> str:
    """``exit code N``, or the name of the signal that ended the process."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"on {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def port_is_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` right now, the way uvicorn and redis-server
    bind (``SO_REUSEADDR``): a port whose last connections wait in TIME_WAIT (a run stopped a
    moment ago) is free for them, only a listener or a live connection's port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> ReadyCheck:
    """A readiness check: ``GET url`` answers 2xx."""

    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                response = await client.get(url)
        except httpx.HTTPError:
            return False
        return response.is_success

    return check


def tcp_open(host: str, port: int) -> ReadyCheck:
    """A readiness check: the port accepts connections."""

    async def check() -> bool:
        return await asyncio.to_thread(port_is_open, host, port)

    return check


@dataclass
class ChildSpec:
    """How to start one child and how to tell that it is ready."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready: ReadyCheck | None = None
    ready_timeout_s: float = 60.0


@dataclass
class Child:
    """A started child process."""

    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


class ChildFailed(RuntimeError):
    """A child exited, or did not become ready in time."""

    def __init__(self, child: Child, reason: str) -> None:
        super().__init__(f"{child.name} {reason}")
        self.child = child


@dataclass
class Supervisor:
    """Starts children in order and stops them in reverse order."""

    log_dir: Path
    grace_s: float = 10.0
    children: list[Child] = field(default_factory=list)
    force: bool = False  # set by a second Ctrl-C: skip the grace periods

    def start(self, spec: ChildSpec) -> Child:
        child = self._spawn(spec, "wb")
        self.children.append(child)
        return child

    def _spawn(self, spec: ChildSpec, mode: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open(mode) as log_file:
            process = subprocess.Popen(
                list(spec.argv),
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return Child(spec, process, log_path)

    def child(self, name: str) -> Child:
        """The child called ``name`` (KeyError if none)."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    async def kill(self, name: str) -> Child:
        """SIGKILL the child ``name`` (its whole process group: no grace, no cleanup) and wait
        until it is gone; the chaos test's crash."""
        child = self.child(name)
        if child.exited() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        await asyncio.to_thread(child.process.wait)
        return child

    def restart(self, name: str) -> Child:
        """Start the child ``name`` again, once it has exited, with the same command line
        (so the same port) and environment; its log is appended to. It keeps its place in
        the stop order. Wait for it with :meth:`wait_ready`."""
        old = self.child(name)
        if old.exited() is None:
            raise RuntimeError(f"{name} is still running")
        child = self._spawn(old.spec, "ab")
        self.children[self.children.index(old)] = child
        return child

    async def wait_ready(self, child: Child, stop: asyncio.Event) -> bool:
        """Wait until ``child`` passes its check; False if ``stop`` was set meanwhile."""
        check = child.spec.ready
        deadline = time.monotonic() + child.spec.ready_timeout_s
        while not stop.is_set():
            code = child.exited()
            if code is not None:
                raise ChildFailed(child, f"exited with code {code} while starting")
            if check is None or await check():
                return True
            if time.monotonic() > deadline:
                raise ChildFailed(child, f"not ready after {child.spec.ready_timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        return False

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if child.exited() is not None), None)

    async def stop_all(self, report: Callable[[str], None] = print) -> None:
        """Stop every child, last started first: SIGTERM, the grace period, then SIGKILL."""
        for child in reversed(self.children):
            await self._stop(child, report)

    async def _stop(self, child: Child, report: Callable[[str], None]) -> None:
        if child.exited() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        # Polled: a Popen offers nothing to await, and a second Ctrl-C must cut the wait short.
        while child.exited() is None and time.monotonic() < deadline and not self.force:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if child.exited() is None:
            report(f"  {child.name} did not stop within {self.grace_s:.0f} s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await asyncio.to_thread(child.process.wait)
        report(f"  stopped {child.name} ({describe_exit(child.process.returncode)})")
