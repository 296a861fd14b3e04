"""The small decisions of ``kartahook run``: ports, a second run on the same var/, the summary."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kartahook.commands.run import PORT_OFFSETS, choose_ports, running_elsewhere
from kartahook.demo import DemoResult
from service.store.server import free_port


def port_args(port: int, **explicit: int) -> argparse.Namespace:
    args = argparse.Namespace(host="127.0.0.1", port=port)
    for name in PORT_OFFSETS:
        setattr(args, f"{name}_port", explicit.get(name))
    return args


def test_a_taken_base_port_is_replaced_by_a_free_one() -> None:
    """When the base port is in use, that component gets another, free port; others keep theirs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1]
        ports = choose_ports(port_args(base, redis=free_port()))
    assert ports["service"] != base
    assert len(set(ports.values())) == len(PORT_OFFSETS)


def test_port_zero_gives_distinct_free_ports_and_explicit_ports_win() -> None:
    """--port 0 picks a distinct free port per component; a --<name>-port is used as given."""
    sandbox = free_port()
    ports = choose_ports(port_args(0, sandbox=sandbox))
    assert ports["sandbox"] == sandbox
    assert len(set(ports.values())) == len(PORT_OFFSETS)
    assert all(port > 0 for port in ports.values())


def test_a_live_run_owning_var_dir_is_detected(tmp_path: Path) -> None:
    """run.json naming a live process blocks a second run; a dead pid or no file does not."""
    assert running_elsewhere(tmp_path) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.json").write_text(json.dumps({"pid": sleeper.pid}))
        assert running_elsewhere(tmp_path) == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert running_elsewhere(tmp_path) is None


def test_summary_counts_outcomes_deliveries_and_duplicates() -> None:
    """The demo summary lists each payment's statuses and totals outcomes and duplicates."""
    result = DemoResult(
        statuses={"p1": ["submitted", "approved", "captured", "completed"], "p2": ["submitted"]},
        duplicates={"p1": 2, "p2": 0},
        elapsed_s=1.31,
    )
    lines = result.summary_lines()
    assert lines[0] == "  p1  submitted -> approved -> captured -> completed  (2 duplicates)"
    assert lines[1] == "  p2  submitted"
    assert (
        lines[-1] == "  2 payments (1 completed, 1 unfinished), 5 deliveries, 2 duplicates, 1.3 s"
    )
    assert result.unfinished == ["p2"]


def test_run_starts_the_service_with_its_admin_port_and_records_admin_url(tmp_path: Path) -> None:
    """`run` gives `serve` the admin port it chose (base + 4) and writes `admin_url` to
    run.json next to `service_url`."""
    from kartahook.cli import build_parser
    from kartahook.commands.run import run_stack, state
    from service.settings import Settings

    base = free_port()
    args = port_args(base, **{name: base + offset for name, offset in PORT_OFFSETS.items()})
    args.var_dir, args.grace = tmp_path, 1.0
    ports = choose_ports(args)
    assert ports["admin"] == base + PORT_OFFSETS["admin"]
    stack = run_stack(args, Settings())
    serve = dict(stack.specs({}))["serve"]
    parsed = build_parser().parse_args(list(serve.argv[3:]))
    assert (parsed.port, parsed.admin_port) == (ports["service"], ports["admin"])
    stack.pids = lambda: {"service": 1}  # type: ignore[method-assign]
    recorded = state(stack)
    assert recorded["admin_url"] == f"http://127.0.0.1:{ports['admin']}"
    assert recorded["service_url"] == f"http://127.0.0.1:{ports['service']}"


def test_summary_has_a_line_per_plan_code() -> None:
    """With the plan codes known, each payment line names its plan code and one line per plan
    code counts its payments, final statuses and deliveries, before the totals."""
    result = DemoResult(
        statuses={
            "p1": ["submitted", "approved", "captured", "completed"],
            "p2": ["submitted", "failed"],
            "p3": ["submitted", "approved", "captured", "completed"],
        },
        plans={"p1": "STR", "p2": "STR", "p3": "MVK"},
    )
    lines = result.summary_lines()
    assert lines[0] == "  p1 (STR)  submitted -> approved -> captured -> completed"
    assert lines[3:5] == [
        "  plan MVK: 1 payments (1 completed), 4 deliveries",
        "  plan STR: 2 payments (1 completed, 1 failed), 6 deliveries",
    ]
    assert lines[-1].startswith("  3 payments (2 completed, 1 failed), 10 deliveries")


def _plain_bind_fails(port: int) -> bool:
    """Whether binding ``port`` without SO_REUSEADDR fails (what a TIME_WAIT socket causes)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_a_port_in_time_wait_keeps_its_default() -> None:
    """A base port whose last connection waits in TIME_WAIT (a run stopped a moment ago) is
    not "taken": run keeps it, as uvicorn and redis-server bind it with SO_REUSEADDR."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    base = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", base))
    served, _ = listener.accept()
    served.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.recv(1)  # the FIN arrived
    client.close()
    listener.close()
    deadline = time.monotonic() + 10
    while not _plain_bind_fails(base):  # TIME_WAIT is entered once the client's FIN is acked
        assert time.monotonic() < deadline, "the port never went to TIME_WAIT"
        time.sleep(0.01)
    explicit = {name: free_port() for name in PORT_OFFSETS if name != "service"}
    ports = choose_ports(port_args(base, **explicit))
    assert ports["service"] == base


def test_run_stack_turns_the_admin_api_on_and_builds_the_unhappy_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` gives only the service a generated admin token (through its environment, never
    its command line); --fail-ratio reaches the sandbox; --failing-subscriber adds a demo
    subscriber answering 500 and a short retry schedule for every child."""
    from kartahook.commands.run import FAILING_SETTINGS, run_stack
    from service.settings import Settings

    monkeypatch.delenv("KARTAHOOK_ADMIN_TOKEN", raising=False)
    args = port_args(0)
    args.var_dir, args.grace = tmp_path, 1.0
    args.fail_ratio, args.failing_subscriber = 0.25, 1.0
    stack = run_stack(args, Settings())
    token = stack.admin_token
    assert token and len(token) >= 32
    assert run_stack(args, Settings()).admin_token != token  # one per run
    specs = dict((spec.name, spec) for _, spec in stack.specs({"PATH": "/bin"}))
    assert specs["service"].env["KARTAHOOK_ADMIN_TOKEN"] == token
    for name, spec in specs.items():
        assert token not in " ".join(spec.argv), name
        if name != "service":
            assert "KARTAHOOK_ADMIN_TOKEN" not in spec.env, name
    failing = specs["failing-subscriber"]
    assert failing.argv[-2:] == ["--fail-ratio", "1.0"]
    assert list(stack.sandbox_args) == ["--fail-ratio", "0.25"]
    env = stack.child_env(tmp_path / "s.yaml", tmp_path / "u.yaml")
    assert {k: env[k] for k in FAILING_SETTINGS} == FAILING_SETTINGS
    assert "failing" in [entry.id for entry in stack.entries()]

    monkeypatch.setenv("KARTAHOOK_ADMIN_TOKEN", "operator-chosen-token")
    args.failing_subscriber = None
    plain = run_stack(args, Settings())
    assert plain.admin_token == "operator-chosen-token"
    assert plain.settings_env == {} and [d.id for d in plain.demo_subscribers] == ["demo"]
