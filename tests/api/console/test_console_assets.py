"""The console's files as the admin listener serves them (no browser): content types, security
headers, only on the admin listener, nothing else under /console/; and the assets themselves
(no inline script or style, no HTML built from strings, shipped as package data)."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.api.console import ASSETS, SECURITY_HEADERS
from service.settings import Settings
from tests.support import serve_listeners

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "service" / "api" / "console" / "static"
TOKEN = "console-test-token"


@pytest.fixture
async def listeners(redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """(public URL, admin URL) of a real ``serve`` app on two sockets."""
    settings = Settings(redis_url=redis_url, admin_token=TOKEN)
    async with serve_listeners(settings, {}) as urls:
        yield urls


def assert_secure(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


async def test_console_assets_have_their_types_and_security_headers(
    listeners: tuple[str, str],
) -> None:
    """The page (at /console and /console/), its script and stylesheet answer 200 with their
    own content type, the strict security headers and an ETag that turns a reload into a 304."""
    _, admin = listeners
    expected = {
        "/console": ("text/html", "index.html"),
        "/console/": ("text/html", "index.html"),
        "/console/console.js": ("text/javascript", "console.js"),
        "/console/console.css": ("text/css", "console.css"),
    }
    async with httpx.AsyncClient(base_url=admin) as http:
        for path, (content_type, name) in expected.items():
            answer = await http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].split(";")[0] == content_type, path
            assert answer.content == (STATIC / name).read_bytes()
            assert_secure(answer)
            again = await http.get(path, headers={"if-none-match": answer.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            head = await http.head(path)
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(answer.content)
        refused = await http.post("/console")
        assert refused.status_code == 405


async def test_console_is_only_on_the_admin_listener(listeners: tuple[str, str]) -> None:
    """/console and its assets are 404 on the public listener."""
    public, admin = listeners
    async with httpx.AsyncClient() as http:
        for path in ("/console", "/console/", "/console/console.js", "/console/console.css"):
            assert (await http.get(public + path)).status_code == 404, path
            assert (await http.get(admin + path)).status_code == 200, path


async def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` sent exactly as written (no client normalises its dots or escapes)."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/console/../pyproject.toml",
        "/console/..%2f..%2f..%2fpyproject.toml",
        "/console/%2e%2e/__init__.py",
        "/console/static/console.js",
        "/console/__init__.py",
        "/console//etc/passwd",
        "/console/console.js/..",
        "/console/index.html%00.js",
        "/console/..\\__init__.py",
    ],
)
async def test_paths_outside_the_console_files_are_refused(
    listeners: tuple[str, str], target: str
) -> None:
    """A path under /console/ that is not one of its three files is a 404 (or 400 for a
    request line the server refuses), never a file of the package or the disk."""
    _, admin = listeners
    status, body = await raw_get(admin, target)
    assert status in (400, 404), (target, status)
    assert b"[project]" not in body and b"import" not in body and b"root:" not in body


def test_page_has_no_inline_script_or_style() -> None:
    """index.html loads its one script and one stylesheet from /console and has no inline
    script, style or event handler (the CSP would block them anyway)."""
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/console/console.js" defer', "")]
    assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == ["/console/console.css"]
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html  # nothing from a CDN


def test_script_never_builds_html_from_strings() -> None:
    """console.js sets server data as text: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write, eval or string-built functions; it fetches only the admin API."""
    source = (STATIC / "console.js").read_text()
    script = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")
    for sink in sinks:
        assert sink not in script, sink
    assert re.findall(r"fetch\(([^,]+),", script) == ['"/admin" + path']
    assert "http://" not in script and "https://" not in script


def test_every_console_file_ships_as_package_data() -> None:
    """Each file the console serves is matched by pyproject's package-data for
    service.api.console (so the wheel and the Docker image carry it)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service.api.console"]
    for name in ASSETS:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(ASSETS)
    assert set(SECURITY_HEADERS) >= {"content-security-policy", "x-frame-options"}
