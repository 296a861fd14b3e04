"""``kartahook logs``: var/log/*.log (structlog JSON lines) shown readably, merged by time,
one component, --json, --follow."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson
import pytest

from kartahook.cli import main as cli_main
from tests.cli.test_errors import kartahook_env


def _line(at: str, event: str, **fields: object) -> str:
    return orjson.dumps({**fields, "event": event, "level": "info", "timestamp": at}).decode()


def write_logs(var: Path) -> None:
    log = var / "log"
    log.mkdir(parents=True)
    (log / "service.log").write_text(
        _line("2026-01-01T10:00:00.100000Z", "listening", public="127.0.0.1:8700")
        + "\n"
        + _line("2026-01-01T10:00:02.000000Z", "request", path="/v1/webhooks/kartapay", status=200)
        + "\n"
    )
    (log / "worker.log").write_text(
        _line(
            "2026-01-01T10:00:01.000000Z",
            "delivery_attempt",
            attempt=1,
            duration_ms=3.2,
            payment_id="pay_1",
            webhook_id="msg_1",
        )
        + "\nnot json: a traceback line a library printed\n"
    )


def test_logs_merges_every_component_by_time_readably(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a component, every log is shown merged by time, each line: time, component,
    level, event, then the ids first and the other fields as key=value; a non-JSON line is
    shown as it is, after the line before it."""
    write_logs(tmp_path)
    assert cli_main(["logs", "--var-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["10:00:00.100", "service"],
        ["10:00:01.000", "worker"],
        ["worker", "not"],
        ["10:00:02.000", "service"],
    ]
    assert lines[1].split()[2:] == [
        "info",
        "delivery_attempt",
        "payment_id=pay_1",
        "webhook_id=msg_1",
        "attempt=1",
        "duration_ms=3.2",
    ]
    assert lines[2].endswith("not json: a traceback line a library printed")


def test_logs_of_one_component_and_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A component shows only its log; --json prints its JSON lines with `component` added;
    --lines keeps the last N."""
    write_logs(tmp_path)
    assert cli_main(["logs", "service", "--json", "--var-dir", str(tmp_path)]) == 0
    parsed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["component"], p["event"]) for p in parsed] == [
        ("service", "listening"),
        ("service", "request"),
    ]
    assert cli_main(["logs", "-n", "1", "--var-dir", str(tmp_path)]) == 0
    [last] = capsys.readouterr().out.splitlines()
    assert "request" in last and "path=/v1/webhooks/kartapay" in last


async def test_logs_follow_prints_new_lines_until_ctrl_c(tmp_path: Path) -> None:
    """--follow prints lines appended after it started, picks up a log that appears, and
    exits 0 on Ctrl-C."""
    write_logs(tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kartahook.cli",
        "logs",
        "--follow",
        "--var-dir",
        str(tmp_path),
        env=kartahook_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    seen: list[str] = []

    async def read_until(text: str) -> bool:
        while not any(text in line for line in seen):
            line = await asyncio.wait_for(process.stdout.readline(), 30)  # type: ignore[union-attr]
            if not line:
                return False
            seen.append(line.decode())
        return True

    try:
        assert await read_until("10:00:02.000")  # what was there
        with (tmp_path / "log" / "worker.log").open("a") as log:
            log.write(_line("2026-01-01T10:00:03.000000Z", "delivery_attempt", attempt=2) + "\n")
        assert await read_until("attempt=2")
        (tmp_path / "log" / "sandbox.log").write_text(
            _line("2026-01-01T10:00:04.000000Z", "sandbox started") + "\n"
        )
        assert await read_until("sandbox started")
        assert "sandbox" in seen[-1]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0
    assert process.stderr is not None
    assert await process.stderr.read() == b""
