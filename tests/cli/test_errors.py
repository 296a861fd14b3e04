"""The CLI's errors: every bad invocation ends in one line on stderr and a non-zero exit, never a
traceback; ``--version``; options accepted after the action (issue 13)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.domain.events import EventHint
from service.store.dead_letters import EventDeadLetters
from service.store.subscribers import Subscriber, SubscriberStore
from tests.delivery_support import settings_for
from tests.support import serve_app

TOKEN = "admin-cli-token-0123456789"
WRONG_TOKEN = "wrong-token-9876543210"
URL_PASSWORD = "hunter2-url-password"
CLI = [sys.executable, "-m", "kartahook.cli"]
REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1: connections are refused
# Placeholders in a case's argv, replaced when the test runs.
ADMIN = "{admin}"
TMP = "{tmp}"
REDIS = "{redis}"


@dataclass
class Case:
    argv: list[str]
    code: int  # the exit code expected
    says: str  # a part of the one stderr line
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # files written under {tmp} first
    secrets: tuple[str, ...] = ()  # values that must appear nowhere in the output


CASES: dict[str, Case] = {
    "status: Redis refuses": Case(
        ["status", "--redis-url", "redis://127.0.0.1:1/0"], 2, "cannot read Redis"
    ),
    "status: not a URL": Case(["status", "--redis-url", "notaurl"], 2, "bad Redis URL"),
    "status: Redis password never shown": Case(
        ["status", "--redis-url", f"redis://:{URL_PASSWORD}@127.0.0.1:1/0"],
        2,
        "cannot read Redis",
        secrets=(URL_PASSWORD,),
    ),
    "worker: no Redis URL": Case(["worker"], 2, "KARTAHOOK_REDIS_URL is not set"),
    "worker: Redis unreachable": Case(
        ["worker"], 2, "cannot use Redis", env={"KARTAHOOK_REDIS_URL": "redis://127.0.0.1:1/0"}
    ),
    "worker: bad setting": Case(
        ["worker"],
        2,
        "KARTAHOOK_WORKER_MAX_JOBS",
        env={"KARTAHOOK_REDIS_URL": "redis://127.0.0.1:1/0", "KARTAHOOK_WORKER_MAX_JOBS": "many"},
    ),
    "demo: subscriber unreachable": Case(
        ["demo", "--subscriber-url", REFUSED, "--var-dir", TMP], 1, "cannot reach"
    ),
    "demo: bad --payments": Case(["demo", "--payments", "0"], 2, "--payments"),
    "subscribers: malformed admin URL": Case(
        ["subscribers", "--admin-url", "http://[::1", "list"], 2, "bad --admin-url"
    ),
    "subscribers: malformed admin URL after the action": Case(
        ["subscribers", "list", "--admin-url", "http://[::1"], 2, "bad --admin-url"
    ),
    "dlq: admin URL without a scheme": Case(
        ["dlq", "list", "--admin-url", "notaurl"], 2, "bad --admin-url"
    ),
    "subscribers: admin URL refuses connections": Case(
        ["subscribers", "list", "--admin-url", REFUSED], 1, "cannot reach the admin API"
    ),
    "dlq: admin URL password never shown": Case(
        ["dlq", "list", "--admin-url", f"http://ops:{URL_PASSWORD}@127.0.0.1:1"],
        1,
        "cannot reach the admin API",
        secrets=(URL_PASSWORD,),
    ),
    "subscribers: wrong admin token": Case(
        ["subscribers", "--admin-url", ADMIN, "--token", WRONG_TOKEN, "list"],
        1,
        "token",
        secrets=(WRONG_TOKEN,),
    ),
    "dlq: wrong admin token after the action": Case(
        ["dlq", "list", "--json", "--admin-url", ADMIN, "--token", WRONG_TOKEN],
        1,
        "token",
        secrets=(WRONG_TOKEN,),
    ),
    "subscribers: unknown subscriber": Case(
        ["subscribers", "show", "nobody", "--admin-url", ADMIN, "--token", TOKEN], 1, "404"
    ),
    "dlq: unknown --kind": Case(
        ["dlq", "list", "--kind", "bogus", "--admin-url", ADMIN, "--token", TOKEN],
        1,
        "unknown --kind",
    ),
    "unknown command": Case(["bogus"], 2, "invalid choice: 'bogus'"),
    "unknown option": Case(["status", "--bogus"], 2, "unrecognized arguments: --bogus"),
    "missing action": Case(["subscribers"], 2, "required: ACTION"),
    "missing required argument": Case(["subscribers", "show"], 2, "required: id"),
    "bad option value": Case(["dlq", "list", "--limit", "many"], 2, "invalid int value"),
    "bad option range": Case(["sandbox", "--fail-ratio", "2"], 2, "between 0 and 1"),
    "config check: missing file": Case(
        ["config", "check", "--sources", f"{TMP}/absent.yaml"], 1, "absent.yaml"
    ),
    "config check: invalid YAML": Case(
        ["config", "check", "--sources", f"{TMP}/bad.yaml"],
        1,
        "bad.yaml",
        files={"bad.yaml": "sources: [unclosed\n"},
    ),
    "config check: no file at all": Case(["config", "check"], 1, "no file given"),
    "status: no Redis anywhere": Case(["status"], 2, "start `make run`"),
    "listen: no --forward-to": Case(["listen"], 2, "--forward-to"),
    "listen: --forward-to not a URL": Case(
        ["listen", "--forward-to", "notaurl"], 2, "bad --forward-to"
    ),
    "listen: malformed admin URL": Case(
        ["listen", "--forward-to", "http://127.0.0.1:9/x", "--admin-url", "http://[::1"],
        2,
        "bad --admin-url",
    ),
    "listen: bad --secret": Case(
        ["listen", "--forward-to", "http://127.0.0.1:9/x", "--secret", "whsec_not base64!"],
        2,
        "bad --secret",
    ),
    "listen: admin API unreachable": Case(
        ["listen", "--forward-to", "http://127.0.0.1:9/x", "--admin-url", REFUSED],
        1,
        "cannot register the subscriber",
    ),
    "listen: wrong admin token": Case(
        ["listen", "--forward-to", "http://127.0.0.1:9/x", "--admin-url", ADMIN],
        1,
        "token",
        env={"KARTAHOOK_ADMIN_TOKEN": WRONG_TOKEN},
        secrets=(WRONG_TOKEN,),
    ),
    "trigger: unknown outcome": Case(["trigger", "refunded"], 2, "invalid choice: 'refunded'"),
    "trigger: unknown source": Case(
        ["trigger", "failed", "--source", "XXX"], 2, "invalid choice: 'XXX'"
    ),
    "trigger: no Redis anywhere": Case(["trigger", "failed"], 2, "no Redis"),
    "trigger: not a Redis URL": Case(
        ["trigger", "failed", "--redis-url", "notaurl"], 2, "bad Redis URL"
    ),
    "trigger: Redis unreachable": Case(
        ["trigger", "failed", "--redis-url", "redis://127.0.0.1:1/0"], 1, "cannot read Redis"
    ),
    "trigger: sandbox unreachable": Case(
        ["trigger", "canceled", "--redis-url", REDIS, "--kartapay-url", REFUSED], 1, "KartaPay"
    ),
    "trigger: not the sandbox": Case(
        ["trigger", "completed", "--redis-url", REDIS, "--kartapay-url", ADMIN], 1, "KartaPay"
    ),
    "trigger: bad --timeout": Case(["trigger", "failed", "--timeout", "0"], 2, "--timeout"),
    "logs: no logs": Case(["logs"], 1, "no logs in"),
    "logs: unknown component": Case(
        ["logs", "bogus"],
        2,
        "unknown component 'bogus'; known: service, worker",
        files={"var/log/service.log": "{}\n", "var/log/worker.log": "{}\n"},
    ),
    "logs: bad --lines": Case(["logs", "--lines", "-1"], 2, "--lines"),
    "run: bad --failing-subscriber": Case(
        ["run", "--failing-subscriber", "2"], 2, "between 0 and 1"
    ),
    "run: bad --fail-ratio": Case(["run", "--fail-ratio", "x"], 2, "invalid ratio value"),
}


def kartahook_env(**values: str) -> dict[str, str]:
    """Our environment without any KARTAHOOK_ setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARTAHOOK_")}
    return {**env, "PYTHONUNBUFFERED": "1", **values}


async def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """The real ``kartahook ARGV`` as a process (without blocking the served app's loop)."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)  # a hang guard only
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def admin_url(redis_url: str) -> AsyncIterator[str]:
    """The real admin listener app with its /admin routes and an admin token, on 127.0.0.1."""
    settings = settings_for(redis_url, admin_token=TOKEN, subscriber_allowlist=["127.0.0.0/8"])
    async with serve_app(create_admin_app(settings)) as base:
        yield base


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_invocation_prints_one_line_and_exits_non_zero(
    name: str, admin_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Each bad invocation prints exactly one line on stderr, naming the problem and never a
    secret, exits with its code (1 runtime, 2 usage/config) and shows no traceback."""
    case = CASES[name]
    for file_name, text in case.files.items():
        (tmp_path / file_name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file_name).write_text(text)
    argv = [
        arg.replace(ADMIN, admin_url).replace(TMP, str(tmp_path)).replace(REDIS, redis_url)
        for arg in case.argv
    ]
    code, out, err = await run_cli(argv, kartahook_env(**case.env), tmp_path)
    assert "Traceback" not in out + err, out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"kartahook {argv[0]}: ") or lines[0].startswith("kartahook: ")
    assert case.says in lines[0], lines[0]
    assert code == case.code, (code, err)
    for secret in case.secrets:
        assert secret not in out + err


async def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    """`kartahook --version` prints the package's version and exits 0."""
    code, out, err = await run_cli(["--version"], kartahook_env(), tmp_path)
    assert (code, out.strip(), err) == (0, f"kartahook {version('kartahook')}", "")


async def test_help_is_written_for_operators(tmp_path: Path) -> None:
    """`--help` shows the operator's description and exit codes, not a module docstring."""
    code, out, _ = await run_cli(["--help"], kartahook_env(), tmp_path)
    assert code == 0
    assert "exit codes" in out and "add_arguments" not in out
    code, out, _ = await run_cli(["dlq", "list", "--help"], kartahook_env(), tmp_path)
    assert code == 0
    assert "--kind" in out and "--admin-url" in out and "oldest first" in out


async def _cli_json(argv: list[str], cwd: Path) -> object:
    code, out, err = await run_cli(argv, kartahook_env(), cwd)
    assert code == 0, (argv, err)
    return orjson.loads(out)


async def test_options_work_before_and_after_the_action(
    admin_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """--json, --admin-url, --token and --kind work after the action as well as before it,
    and an option given before the action is not reset by the action's level."""
    await SubscriberStore(redis).put(Subscriber(id="ledger", url="http://127.0.0.1:9/h"))
    hint = EventHint("kartapay", "evt_1", "pay_1", 1_700_000_000_000, 4)
    await EventDeadLetters(redis).add(hint, "not_found", "NotFoundError: GET -> 404")
    conn = ["--admin-url", admin_url, "--token", TOKEN]

    for argv in (
        ["subscribers", "list", "--json", *conn],
        ["subscribers", *conn, "list", "--json"],
        ["subscribers", "--json", *conn, "list"],
    ):
        listing = await _cli_json(argv, tmp_path)
        assert isinstance(listing, dict), argv
        assert [s["id"] for s in listing["subscribers"]] == ["ledger"], argv

    for argv in (
        ["dlq", "--kind", "events", *conn, "list", "--json"],
        ["dlq", "list", "--kind", "events", "--json", *conn],
    ):
        events = await _cli_json(argv, tmp_path)
        assert isinstance(events, dict), argv
        assert [e["hint"]["event_id"] for e in events["dead_letters"]] == ["evt_1"], argv
    deliveries = await _cli_json(["dlq", "list", "--json", *conn], tmp_path)
    assert isinstance(deliveries, dict)
    assert deliveries["total"] == 0 and deliveries["dead_letters"] == []


async def test_unexpected_error_is_one_line_with_a_debug_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug in a command is one line naming it plus the KARTAHOOK_DEBUG hint, secrets in
    its message hidden; with KARTAHOOK_DEBUG=1 the (redacted) traceback is shown too."""
    import kartahook.commands.status as status_command

    def broken(_args: object) -> int:
        raise RuntimeError(f"boom at redis://:{URL_PASSWORD}@host:6379 with {TOKEN}")

    monkeypatch.setattr(status_command, "run", broken)
    monkeypatch.setenv("KARTAHOOK_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("KARTAHOOK_DEBUG", raising=False)
    assert cli_main(["status"]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("kartahook status: unexpected error: RuntimeError: boom")
    assert "KARTAHOOK_DEBUG=1" in line and "Traceback" not in captured.err
    assert URL_PASSWORD not in captured.err and TOKEN not in captured.err

    monkeypatch.setenv("KARTAHOOK_DEBUG", "1")
    assert cli_main(["status"]) == 1
    debug_err = capsys.readouterr().err
    assert "Traceback" in debug_err and "RuntimeError: boom" in debug_err
    assert URL_PASSWORD not in debug_err and TOKEN not in debug_err


def test_interrupt_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in a command exits 130 and prints nothing."""
    import kartahook.commands.status as status_command

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(status_command, "run", interrupted)
    assert cli_main(["status"]) == 130
    assert capsys.readouterr().err == ""


async def test_trigger_that_is_never_recorded_times_out_with_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    """trigger against a sandbox whose webhooks reach no kartahook: the payment is created and
    its id printed, and after --timeout one line says it was not recorded (exit 1)."""
    from sandbox.kartapay_api import SandboxConfig, create_app

    async with serve_app(create_app(SandboxConfig(step_delay_s=0.05))) as sandbox_url:
        argv = ["trigger", "failed", "--timeout", "1", "--kartapay-url", sandbox_url]
        code, out, err = await run_cli([*argv, "--redis-url", redis_url], kartahook_env(), tmp_path)
    assert code == 1, err
    [printed] = out.splitlines()
    payment_id = printed.split()[1].rstrip(":")
    assert printed.endswith("planned outcome failed")
    [line] = err.splitlines()
    assert line == (
        f"kartahook trigger: payment {payment_id}: failed not recorded after 1 s (last "
        "recorded: nothing); is a worker running? (`kartahook status`)"
    )
