"""The CLI's client of the admin API (``/admin``): ``kartahook subscribers`` and ``kartahook dlq``
talk HTTP to a running ``kartahook serve``, so validation, allowlist and wake-ups happen in one
place (the API), and the CLI never needs Redis credentials.

``--admin-url`` (or ``KARTAHOOK_ADMIN_URL``, default http://127.0.0.1:8090: the admin listener of
``kartahook serve``) and ``--token`` (or ``KARTAHOOK_ADMIN_TOKEN``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import orjson

DEFAULT_ADMIN_URL = "http://127.0.0.1:8090"


class AdminCallError(Exception):
    """The admin API refused a request or could not be reached; the message says why."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KARTAHOOK_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="base URL of kartahook serve's admin listener (env KARTAHOOK_ADMIN_URL)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KARTAHOOK_ADMIN_TOKEN"),
        help="admin Bearer token (env KARTAHOOK_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON")


class AdminClient:
    def __init__(
        self, base_url: str, token: str | None, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/admin",
            headers=headers,
            timeout=30,
            transport=transport,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        return cls(args.admin_url, args.token)

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
                f"cannot reach the admin API at {self.http.base_url}: {exc}"
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
    sys.stderr.write(f"kartahook: {message}\n")
    return 1
