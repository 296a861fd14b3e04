"""``var/run.json``: written with mode 0600, and how the commands find a running stack in it
(explicit options and ``KARTAHOOK_*`` win; a dead run's file is ignored; its admin token goes
only to its own admin URL)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from kartahook.run_state import (
    discover_admin,
    live_run_state,
    read_run_state,
    write_run_state,
)
from service.api.app import create_admin_app
from service.store.subscribers import Subscriber, SubscriberStore
from tests.cli.test_errors import kartahook_env, run_cli
from tests.delivery_support import settings_for
from tests.support import serve_app

TOKEN = "run-json-admin-token-0123456789"


def test_run_json_is_created_with_mode_0600_even_under_a_wide_umask(tmp_path: Path) -> None:
    """write_run_state creates run.json readable by its owner only (0600), whatever the umask
    and whatever mode a previous file had, and a reader gets the whole content."""
    (tmp_path / "run.json").write_text("{}")
    os.chmod(tmp_path / "run.json", 0o644)  # a previous, wider file is replaced, not reused
    previous = os.umask(0)
    try:
        path = write_run_state(tmp_path, {"pid": 1, "admin_token": TOKEN})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_run_state(tmp_path) == {"pid": 1, "admin_token": TOKEN}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left


def test_a_dead_runs_file_is_ignored(tmp_path: Path) -> None:
    """run.json naming a process that is gone (a killed run) is not used for discovery."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_run_state(tmp_path, {"pid": dead.pid, "admin_url": "http://127.0.0.1:9"})
    assert live_run_state(tmp_path) == {}
    write_run_state(tmp_path, {"pid": os.getpid(), "admin_url": "http://127.0.0.1:9"})
    assert live_run_state(tmp_path)["admin_url"] == "http://127.0.0.1:9"


def test_explicit_options_and_environment_win_and_the_token_stays_with_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Option > KARTAHOOK_* > run.json > default, for the URL and the token; run.json's token
    is never sent to another admin URL than run.json's."""
    monkeypatch.delenv("KARTAHOOK_ADMIN_URL", raising=False)
    monkeypatch.delenv("KARTAHOOK_ADMIN_TOKEN", raising=False)
    recorded = "http://127.0.0.1:8704"
    write_run_state(tmp_path, {"pid": os.getpid(), "admin_url": recorded, "admin_token": TOKEN})
    default = "http://127.0.0.1:8090"
    assert discover_admin(None, None, tmp_path, default) == (recorded, TOKEN)
    assert discover_admin("http://other:1", None, tmp_path, default) == ("http://other:1", None)
    assert discover_admin(None, "mine", tmp_path, default) == (recorded, "mine")
    monkeypatch.setenv("KARTAHOOK_ADMIN_URL", "http://env:2")
    assert discover_admin(None, None, tmp_path, default) == ("http://env:2", None)
    monkeypatch.setenv("KARTAHOOK_ADMIN_TOKEN", "env-token")
    assert discover_admin(None, None, tmp_path, default) == ("http://env:2", "env-token")
    assert discover_admin(None, None, tmp_path / "absent", default) == (
        "http://env:2",
        "env-token",
    )
    monkeypatch.delenv("KARTAHOOK_ADMIN_URL")
    monkeypatch.delenv("KARTAHOOK_ADMIN_TOKEN")
    assert discover_admin(None, None, tmp_path / "absent", default) == (default, None)


@pytest.fixture
async def admin_url(redis_url: str) -> AsyncIterator[str]:
    settings = settings_for(redis_url, admin_token=TOKEN, subscriber_allowlist=["127.0.0.0/8"])
    async with serve_app(create_admin_app(settings)) as base:
        yield base


async def test_commands_find_the_admin_api_and_redis_in_run_json(
    admin_url: str, redis_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """With only var/run.json of a live run (no option, no KARTAHOOK_* variable), `subscribers
    list` reaches its admin API with its token and `status` reads its Redis."""
    await SubscriberStore(redis).put(Subscriber(id="ledger", url="http://127.0.0.1:9/h"))
    var = tmp_path / "var"
    var.mkdir()
    write_run_state(
        var,
        {"pid": os.getpid(), "admin_url": admin_url, "admin_token": TOKEN, "redis_url": redis_url},
    )
    code, out, err = await run_cli(["subscribers", "list"], kartahook_env(), tmp_path)
    assert code == 0, err
    assert out.split()[0] == "ledger"
    code, out, err = await run_cli(["status"], kartahook_env(), tmp_path)
    assert "backlog:" in out, err
    assert "subscriber ledger: enabled" in out
    # Without the file, the same command has nothing to talk to.
    (var / "run.json").unlink()
    code, _, err = await run_cli(["status"], kartahook_env(), tmp_path)
    assert code == 2 and "make run" in err
