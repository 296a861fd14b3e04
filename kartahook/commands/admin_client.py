"""The CLI's client of the admin API (``/admin``): ``kartahook subscribers`` and ``kartahook dlq``
talk HTTP to a running ``kartahook serve``, so validation, allowlist and wake-ups happen in one
place (the API), and the CLI never needs Redis credentials.

``--admin-url`` (or ``KARTAHOOK_ADMIN_URL``, else the ``admin_url`` of a running ``kartahook run``'s
``var/run.json``, else http://127.0.0.1:8090: the admin listener of ``kartahook serve``) and
``--token`` (or ``KARTAHOOK_ADMIN_TOKEN``, else ``run.json``'s token when the URL is
``run.json``'s); see :mod:`kartahook.run_state`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from kartahook.errors import RUNTIME, USAGE, CliError
from kartahook.run_state import DEFAULT_VAR_DIR, discover_admin

DEFAULT_ADMIN_URL = "http://127.0.0.1:8090"


class AdminCallError(CliError):
    """The admin API refused a request or could not be reached; the message says why."""


def connection_options(sub_level: bool = False) -> argparse.ArgumentParser:
    """``--admin-url``, ``--token`` and ``--json`` as a parent parser. Given both to a command
    and (``sub_level=True``) to each of its actions, they work before or after the action: at
    the action's level they default to nothing, so they never overwrite the command's value."""

    parent = argparse.ArgumentParser(add_help=False)
    _add_options(parent, sub_level)
    return parent


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connection options to ``parser`` (a command, before its action)."""
    _add_options(parser, sub_level=False)


def _add_options(parent: argparse.ArgumentParser, sub_level: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if sub_level else value

    parent.add_argument(
        "--admin-url",
        metavar="URL",
        default=default(None),
        help="base URL of kartahook serve's admin listener (env KARTAHOOK_ADMIN_URL, else the "
        f"running `kartahook run`'s, from VAR_DIR/run.json, else {DEFAULT_ADMIN_URL})",
    )
    parent.add_argument(
        "--token",
        default=default(None),
        help="the admin API's Bearer token (env KARTAHOOK_ADMIN_TOKEN, else the running "
        "`kartahook run`'s, for its admin URL)",
    )
    parent.add_argument(
        "--var-dir",
        type=Path,
        default=default(DEFAULT_VAR_DIR),
        help="where a running `kartahook run` keeps run.json (default ./var)",
    )
    parent.add_argument(
        "--json", action="store_true", default=default(False), help="print the raw JSON answer"
    )


def admin_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The admin URL and token for ``args``: options, environment, ``run.json``, default."""
    return discover_admin(
        getattr(args, "admin_url", None),
        getattr(args, "token", None),
        getattr(args, "var_dir", DEFAULT_VAR_DIR),
        DEFAULT_ADMIN_URL,
    )


class AdminClient:
    def __init__(
        self, base_url: str, token: str | None, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise AdminCallError(f"bad --admin-url: {exc}", USAGE) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise AdminCallError(
                "bad --admin-url: expected http://HOST[:PORT] or https://HOST[:PORT]", USAGE
            )
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/admin",
            headers=headers,
            timeout=30,
            transport=transport,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        url, token = admin_target(args)
        return cls(url, token)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self.http.request(
                method,
                path,
                params=query,
                content=None if body is None else orjson.dumps(body),
                headers={"content-type": "application/json"} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise AdminCallError(
                f"cannot reach the admin API at {self.http.base_url}: "
                f"{type(exc).__name__}: {exc or 'no detail'}"
            ) from exc
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            data = {"error": "bad_response", "detail": response.text[:200]}
        if response.status_code >= 400:
            detail = data.get("detail") or data.get("error") if isinstance(data, dict) else data
            raise AdminCallError(f"{response.status_code}: {detail}")
        return data

    def close(self) -> None:
        self.http.close()


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str) -> int:
    """Print ``message`` as the CLI's one error line; the exit code of a runtime failure."""
    sys.stderr.write(f"kartahook: {message}\n")
    return RUNTIME
