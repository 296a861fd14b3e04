"""``kartahook run`` as a real subprocess: everything comes up, answers, and stops on a signal."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kartahook.stack import isolated_env
from kartahook.supervisor import port_is_open

START_TIMEOUT_S = 150.0


class RunProcess:
    """A ``kartahook run`` child of the test, with its output in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.output_path = cwd / "run.out"
        env = isolated_env()
        with self.output_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kartahook.cli", "run", "--port", "0", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.state: dict[str, Any] = {}

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self) -> dict[str, Any]:
        """Wait for ``var/run.json``, written once everything is ready; return it."""
        state_path = self.cwd / "var" / "run.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not state_path.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"kartahook run exited early:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kartahook run not ready in time:\n{self.output}")
            time.sleep(0.2)
        time.sleep(0.1)  # the file is written in one call; let it land
        self.state = json.loads(state_path.read_text())
        return self.state

    def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=90)

    def kill_everything(self) -> None:
        """After a failed test: leave no process behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.state.get("children", {}).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def kartahook_run(tmp_path: Path, *args: str) -> Iterator[RunProcess]:
    run = RunProcess(tmp_path, *args)
    try:
        yield run
    finally:
        run.kill_everything()


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def listening_ports(state: dict[str, Any]) -> list[int]:
    urls = [state["redis_url"], state["subscriber_url"], state["service_url"], state["sandbox_url"]]
    urls.append(state.get("admin_url"))
    return [urlsplit(url).port or 0 for url in urls if url]


def assert_all_stopped(run: RunProcess, code: int) -> None:
    assert code == 0, run.output
    for name, pid in run.state["children"].items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert f"stopped {name}" in run.output
    for port in listening_ports(run.state):
        assert not port_is_open("127.0.0.1", port), f"port {port} still open"
    assert not (run.cwd / "var" / "run.json").exists()


@pytest.mark.timeout(300)
def test_run_starts_redis_and_the_demo_stack_and_sigint_stops_all(tmp_path: Path) -> None:
    """run --no-demo: Redis, the demo subscriber (and the sandbox if built) answer, and
    `kartahook demo` drives payments against it; SIGINT stops every child, nothing keeps
    listening, and Redis kept its AOF under var/redis."""
    with kartahook_run(tmp_path, "--no-demo") as run:
        state = run.wait_ready()
        assert state["children"]["redis"]
        assert redis_answers(state["redis_url"])
        received = httpx.get(state["subscriber_url"] + "/received", timeout=10)
        assert received.status_code == 200
        assert received.json()["count"] == 0
        token = {"Authorization": "Bearer sandbox-token"}
        listing = httpx.get(state["sandbox_url"] + "/v1/payments", headers=token, timeout=10)
        assert listing.status_code == 200
        assert httpx.get(state["sandbox_url"] + "/v1/payments", timeout=10).status_code == 401
        assert httpx.get(state["service_url"] + "/healthz", timeout=10).status_code == 200
        assert "ready:" in run.output
        # `kartahook demo` finds the running stack through var/run.json
        demo = subprocess.run(
            [sys.executable, "-m", "kartahook.cli", "demo", "--payments", "2"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "2 payments (" in demo.stdout
        assert demo.stdout.count("delivered") >= 2
        code = run.stop(signal.SIGINT)
        assert_all_stopped(run, code)
    assert list((tmp_path / "var" / "redis").glob("appendonly*"))


@pytest.mark.timeout(300)
def test_run_demo_payment_is_delivered_and_sigterm_stops_all(tmp_path: Path) -> None:
    """run --payments 1: the demo payment's transitions reach the demo subscriber, signed and
    verified, ending in a terminal status; SIGTERM then stops every child."""
    with kartahook_run(tmp_path, "--payments", "1") as run:
        state = run.wait_ready()
        deadline = time.monotonic() + 120
        while "demo summary:" not in run.output:
            assert run.process.poll() is None, run.output
            assert time.monotonic() < deadline, run.output
            time.sleep(0.2)
        received = httpx.get(state["subscriber_url"] + "/received", timeout=10).json()
        code = run.stop(signal.SIGTERM)
        assert_all_stopped(run, code)
    statuses = [entry["status"] for entry in received["received"]]
    assert {"completed", "failed", "canceled"} & set(statuses), run.output
    assert len({entry["payment_id"] for entry in received["received"]}) == 1
    assert "1 payments (" in run.output
    assert [entry["type"] for entry in received["received"]] == [f"payment.{s}" for s in statuses]
    lifecycle = ["init", "pending", "submitted", "approved", "captured", "completed"]
    steps = [lifecycle.index(s) if s in lifecycle else len(lifecycle) for s in statuses]
    assert steps == sorted(set(steps)), statuses  # lifecycle order, each transition once


def redis_servers_on(data_dir: Path) -> list[int]:
    """Pids of the redis-server processes working in ``data_dir`` (their AOF's directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() != "redis-server":
                continue
            if Path(os.readlink(proc / "cwd")) == data_dir.resolve():
                state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
    return found


@pytest.mark.timeout(400)
def test_run_keeps_its_admin_token_in_run_json_and_never_doubles_redis_after_sigkill(
    tmp_path: Path,
) -> None:
    """run turns the admin API on with a generated token kept only in run.json (mode 0600;
    not in its output nor any log), prints the console URL, and the CLI finds the admin API
    through run.json; after a SIGKILL of run, the next run stops the Redis it left (found
    through its pidfile) and starts its own: one redis-server on that AOF."""
    var = tmp_path / "var"
    with kartahook_run(tmp_path, "--no-demo") as first:
        state = first.wait_ready()
        token = state["admin_token"]
        assert isinstance(token, str) and len(token) >= 32
        assert stat.S_IMODE((var / "run.json").stat().st_mode) == 0o600
        assert f"{state['admin_url']}/console" in first.output
        listing = subprocess.run(
            [sys.executable, "-m", "kartahook.cli", "subscribers", "list"],
            cwd=tmp_path,
            env=isolated_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.split()[0] == "demo"
        old_redis = state["children"]["redis"]
        assert redis_servers_on(var / "redis") == [old_redis]
        first.process.kill()  # SIGKILL: no clean-up; the embedded Redis outlives it
        first.process.wait()
        assert redis_servers_on(var / "redis") == [old_redis]
        for text in [first.output, *(p.read_text() for p in (var / "log").glob("*.log"))]:
            assert token not in text

        (var / "run.json").unlink()  # the killed run's: wait for the new run's
        with kartahook_run(tmp_path, "--no-demo") as second:
            state = second.wait_ready()
            assert redis_servers_on(var / "redis") == [state["children"]["redis"]]
            assert state["children"]["redis"] != old_redis
            assert f"stopped the redis-server (pid {old_redis})" in second.output
            assert redis_answers(state["redis_url"])
            code = second.stop(signal.SIGINT)
            assert_all_stopped(second, code)
    assert redis_servers_on(var / "redis") == []
