"""``kartahook subscribers list|show|add|remove|enable|disable|attempts`` over the admin API.

The connection options (``--admin-url``, ``--token``, ``--json``) are accepted before or after
the action (``kartahook.commands.admin_client.connection_options``). Failures are raised as
``AdminCallError`` and reported by the CLI's error boundary (``kartahook.cli.main``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kartahook.commands.admin_client import (
    AdminCallError,
    AdminClient,
    add_connection_arguments,
    connection_options,
    print_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    options = connection_options(sub_level=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              parents=[options])  # fmt: skip

    action("list", "list the subscribers")
    for name, text in (
        ("show", "show one subscriber"),
        ("remove", "remove a subscriber (its pending deliveries are dropped)"),
        ("enable", "enable a subscriber and resume its parked deliveries"),
        ("disable", "disable a subscriber (its deliveries wait)"),
    ):
        action(name, text).add_argument("id", help="the subscriber's id")
    attempts = action("attempts", "show a subscriber's delivery attempts, newest first")
    attempts.add_argument("id", help="the subscriber's id")
    attempts.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    add = action("add", "add a subscriber (its signing secret is printed once)")
    add.add_argument("id", help="the new subscriber's id")
    add.add_argument("url", help="where its deliveries are POSTed (inside the allowlist)")
    add.add_argument("--secret", help="whsec_… (generated when omitted)")
    add.add_argument("--events", nargs="+", default=None, help="patterns, e.g. payment.*")
    add.add_argument("--channels", nargs="+", default=None, help="only these context.channels")
    add.add_argument("--sources", nargs="+", default=None, help="only these inbound sources")
    add.add_argument("--concurrency", type=int, default=None, help="requests in flight at most")
    add.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    add.add_argument("--disabled", action="store_true", help="create it disabled")


def _add_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"id": args.id, "url": args.url, "enabled": not args.disabled}
    for name in ("secret", "events", "channels", "sources", "concurrency"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            raise AdminCallError(f"--header {item!r}: expected NAME=VALUE")
        headers[name.strip()] = value.strip()
    if headers:
        body["headers"] = headers
    return body


def _line(sub: dict[str, Any]) -> str:
    state = "enabled" if sub["enabled"] else f"disabled ({sub.get('disabled_reason') or '-'})"
    return f"{sub['id']:<20} {state:<28} {','.join(sub['events']):<30} {sub['url']}"


def run(args: argparse.Namespace) -> int:
    client = AdminClient.from_args(args)
    try:
        return _run(client, args)
    finally:
        client.close()


def _run(client: AdminClient, args: argparse.Namespace) -> int:
    action = args.action
    out = sys.stdout
    if action == "list":
        data = client.call("GET", "/subscribers")
        if args.json:
            print_json(data)
        else:
            for sub in data["subscribers"]:
                out.write(_line(sub) + "\n")
        return 0
    if action == "add":
        data = client.call("POST", "/subscribers", _add_body(args))
        if args.json:
            print_json(data)
        else:
            out.write(_line(data) + "\n")
            out.write(f"secret: {data['secret']}  (shown once; give it to the subscriber)\n")
        return 0
    if action == "attempts":
        data = client.call("GET", f"/subscribers/{args.id}/attempts", limit=args.limit)
        if args.json:
            print_json(data)
        else:
            for a in data["attempts"]:
                out.write(
                    f"{a['at']}  {a['type']:<20} {a['webhook_id']}  try {a['attempt']:<3} "
                    f"{a['status'] or '-':<4} {a['outcome']:<9} {a['latency_ms']:>8.1f} ms  "
                    f"{a['error'] or ''}\n"
                )
        return 0
    if action == "remove":
        client.call("DELETE", f"/subscribers/{args.id}")
        out.write(f"removed {args.id}\n")
        return 0
    method, path = {
        "show": ("GET", f"/subscribers/{args.id}"),
        "enable": ("POST", f"/subscribers/{args.id}/enable"),
        "disable": ("POST", f"/subscribers/{args.id}/disable"),
    }[action]
    data = client.call(method, path)
    if args.json or action == "show":
        print_json(data)
    else:
        out.write(_line(data) + "\n")
    return 0
