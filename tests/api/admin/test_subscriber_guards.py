"""Subscribers that cannot be turned against kartahook, refused when saved: control characters
in the URL or headers, and URLs at kartahook's own Redis, admin listener or worker metrics port,
whatever the allowlist says (through the admin API served on 127.0.0.1, the file, the CLI)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from kartahook.cli import main as cli_main
from service.api.app import create_admin_app
from service.domain.signing import generate_secret
from service.settings import Settings
from service.store.server import free_port
from service.store.subscribers import (
    SubscriberError,
    SubscriberStore,
    configured_targets,
    load_subscribers_file,
)
from tests.delivery_support import settings_for, subscriber
from tests.support import serve_app

TOKEN = "admin-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# An allowlist that admits every address and name: the guards hold whatever it says.
EVERYWHERE = ["0.0.0.0/0", "::/0", "localhost", "*.localhost", socket.gethostname()]
CONTROL = ["\r\n", "\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\x9f"]


@pytest.fixture
async def guarded(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """The admin app on 127.0.0.1 at its configured admin port, the allowlist wide open, a
    worker metrics port configured; an authenticated client of its /admin routes."""
    admin_port = free_port()
    settings = settings_for(
        redis_url,
        admin_token=TOKEN,
        admin_host="127.0.0.1",
        admin_port=admin_port,
        worker_metrics_port=free_port(),
        subscriber_allowlist=EVERYWHERE,
    )
    async with (
        serve_app(create_admin_app(settings), port=admin_port) as base,
        httpx.AsyncClient(base_url=base + "/admin", headers=AUTH) as http,
    ):
        yield http, settings


def _resolvable_hostname() -> str | None:
    """This machine's host name when it resolves (to one of its own addresses)."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return name if name.lower() != "localhost" else None


async def test_control_characters_are_refused_by_the_admin_api(
    guarded: tuple[httpx.AsyncClient, Settings], redis: aioredis.Redis
) -> None:
    """Control characters in URL, header name or value: 422 control_characters, nothing stored."""
    http, _ = guarded
    port = free_port()
    for char in CONTROL:
        bodies = [
            {"id": "a", "url": f"http://127.0.0.1:{port}/h{char}X-Injected: 1"},
            {"id": "a", "url": f"http://127.0.0.1:{port}/h", "headers": {f"X-A{char}B": "v"}},
            {
                "id": "a",
                "url": f"http://127.0.0.1:{port}/h",
                "headers": {"X-Token": f"tok-SECRET{char}Injected: 1"},
            },
        ]
        for body in bodies:
            answer = await http.post("/subscribers", json=body)
            assert (answer.status_code, answer.json()["error"]) == (422, "control_characters")
            assert set(answer.json()) == {"error", "detail"} and answer.json()["detail"]
            assert "SECRET" not in answer.text
    assert (await http.get("/subscribers")).json()["subscribers"] == []
    created = await http.post("/subscribers", json={"id": "a", "url": f"http://127.0.0.1:{port}/"})
    assert created.status_code == 201
    patched = await http.patch("/subscribers/a", json={"headers": {"X-Token": "a\r\nb: c"}})
    assert (patched.status_code, patched.json()["error"]) == (422, "control_characters")
    non_ascii = await http.patch("/subscribers/a", json={"headers": {"X-Token": "caf\u00e9"}})
    assert (non_ascii.status_code, non_ascii.json()["error"]) == (422, "invalid_subscriber")
    stored = await SubscriberStore(redis).get("a")
    assert stored is not None and stored.headers == {}


async def test_urls_at_kartahooks_own_listeners_are_refused_whatever_the_allowlist(
    guarded: tuple[httpx.AsyncClient, Settings],
) -> None:
    """A URL at Redis/admin/metrics ports, any local alias: 422 forbidden_target, any allowlist."""
    http, settings = guarded
    assert settings.redis_url and settings.worker_metrics_port
    redis_port = urlsplit(settings.redis_url).port
    ports = {
        "Redis": redis_port,
        "admin listener": settings.admin_port,
        "worker metrics port": settings.worker_metrics_port,
    }
    hosts = [
        "127.0.0.1",
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "127.0.0.2",
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:2]",
    ]
    hostname = _resolvable_hostname()
    if hostname is not None:
        hosts.append(hostname)  # checked on the address it resolves to
    for what, port in ports.items():
        for host in hosts:
            url = f"http://{host}:{port}/hook"
            answer = await http.post("/subscribers", json={"id": "evil", "url": url})
            assert (answer.status_code, answer.json()["error"]) == (422, "forbidden_target"), url
            assert what in answer.json()["detail"], url
    assert (await http.get("/subscribers")).json()["subscribers"] == []
    fine = f"http://127.0.0.1:{free_port()}/hook"
    assert (await http.post("/subscribers", json={"id": "ok", "url": fine})).status_code == 201
    moved = await http.patch("/subscribers/ok", json={"url": f"http://[::1]:{redis_port}/"})
    assert (moved.status_code, moved.json()["error"]) == (422, "forbidden_target")
    assert (await http.get("/subscribers/ok")).json()["url"] == fine


async def test_enable_refuses_a_subscriber_that_would_be_paused_again(
    guarded: tuple[httpx.AsyncClient, Settings], redis: aioredis.Redis, redis_url: str
) -> None:
    """Enable refuses (422) a subscriber at a forbidden target or outside the allowlist."""
    http, settings = guarded
    redis_port = urlsplit(redis_url).port
    store = SubscriberStore(redis)
    await store.put(subscriber("old", f"http://127.0.0.1:{redis_port}", enabled=False))
    answer = await http.post("/subscribers/old/enable")
    assert (answer.status_code, answer.json()["error"]) == (422, "forbidden_target")
    stored = await store.get("old")
    assert stored is not None and stored.enabled is False
    narrow = settings.model_copy(update={"subscriber_allowlist": ["10.0.0.0/8"]})
    async with serve_app(create_admin_app(narrow)) as base:
        await store.put(subscriber("far", f"http://127.0.0.1:{free_port()}", enabled=False))
        async with httpx.AsyncClient(base_url=base + "/admin", headers=AUTH) as narrow_http:
            refused = await narrow_http.post("/subscribers/far/enable")
    assert (refused.status_code, refused.json()["error"]) == (422, "host_not_allowed")


def _write(path: Path, url: str, headers: str = "") -> Path:
    path.write_text(
        "subscribers:\n"
        f'  - id: ledger\n    url: "{url}"\n    secret: "{generate_secret()}"\n' + headers
    )
    return path


def test_the_subscribers_file_refuses_control_characters_and_own_listeners(
    tmp_path: Path, redis_url: str
) -> None:
    """The file load refuses control characters and URLs at kartahook's Redis, naming the entry."""
    allow = ["127.0.0.0/8", "localhost"]
    bad_value = _write(
        tmp_path / "value.yaml",
        "http://127.0.0.1:1/h",
        '    headers: {"X-Token": "SECRET\\r\\nInjected: 1"}\n',
    )
    bad_name = _write(
        tmp_path / "name.yaml", "http://127.0.0.1:1/h", '    headers: {"X-A\\nB": "v"}\n'
    )
    bad_url = _write(tmp_path / "url.yaml", "http://127.0.0.1:1/h\\r\\nX: y")
    for path in (bad_value, bad_name, bad_url):
        with pytest.raises(SubscriberError) as refused:
            load_subscribers_file(path, allow, env={})
        assert refused.value.code == "control_characters"
        assert "subscriber #0" in refused.value.message and "SECRET" not in refused.value.message
    redis_port = urlsplit(redis_url).port
    forbidden = configured_targets(Settings(redis_url=redis_url))
    at_redis = _write(tmp_path / "redis.yaml", f"http://localhost:{redis_port}/h")
    with pytest.raises(SubscriberError) as refused:
        load_subscribers_file(at_redis, allow, env={}, forbidden=forbidden)
    assert refused.value.code == "forbidden_target" and "Redis" in refused.value.message
    fine = _write(tmp_path / "fine.yaml", f"http://localhost:{free_port()}/h")
    assert [s.id for s in load_subscribers_file(fine, allow, env={}, forbidden=forbidden)] == [
        "ledger"
    ]


def test_config_check_names_the_problem_in_one_line(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`config check` exits 1 with one line for a CR/LF header or a URL at Redis; 0 when good."""
    sources = tmp_path / "sources.yaml"
    sources.write_text(f'sources:\n  kartapay: {{secrets: ["{generate_secret()}"]}}\n')
    monkeypatch.setenv("KARTAHOOK_REDIS_URL", redis_url)
    monkeypatch.setenv("KARTAHOOK_SUBSCRIBER_ALLOWLIST", "0.0.0.0/0,localhost")
    monkeypatch.delenv("KARTAHOOK_SUBSCRIBERS_FILE", raising=False)
    redis_port = urlsplit(redis_url).port
    cases = {
        "control_characters": _write(
            tmp_path / "crlf.yaml",
            "http://127.0.0.1:1/h",
            '    headers: {"X-Token": "SECRET\\r\\nInjected: 1"}\n',
        ),
        "kartahook itself": _write(tmp_path / "redis.yaml", f"http://127.0.0.2:{redis_port}/"),
    }
    for expected, path in cases.items():
        capsys.readouterr()
        code = cli_main(["config", "check", "--sources", str(sources), "--subscribers", str(path)])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert ("control character" if expected == "control_characters" else expected) in err
        assert "SECRET" not in err
    good = _write(tmp_path / "good.yaml", f"http://127.0.0.1:{free_port()}/")
    assert cli_main(["config", "check", "--sources", str(sources), "--subscribers", str(good)]) == 0
