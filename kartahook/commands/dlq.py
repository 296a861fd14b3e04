"""``kartahook dlq list|show|replay`` over the admin API.

``--kind deliveries`` (the default) is the delivery dead letters of fan-out. The ``events`` kind
(processing's dead letters) plugs in here by adding an entry to :data:`KINDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from kartahook.commands.admin_client import (
    AdminCallError,
    AdminClient,
    add_connection_arguments,
    fail,
    print_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument(
        "--kind", default="deliveries", help="which dead letters: deliveries (default) or events"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="list dead letters, oldest first")
    listing.add_argument("--subscriber")
    listing.add_argument("--since", help="ISO 8601 time with timezone, or epoch ms")
    listing.add_argument("--limit", type=int, default=100)
    show = sub.add_parser("show", help="show one dead letter")
    show.add_argument("subscriber")
    show.add_argument("webhook_id")
    replay = sub.add_parser(
        "replay", help="replay one (SUBSCRIBER WEBHOOK_ID), a subscriber's, or all since a time"
    )
    replay.add_argument("subscriber", nargs="?")
    replay.add_argument("webhook_id", nargs="?")
    replay.add_argument("--since", help="replay every dead letter since this time")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")


def _deliveries(client: AdminClient, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.action == "list":
        data = client.call(
            "GET", "/dead-letters", subscriber=args.subscriber, since=args.since, limit=args.limit
        )
        if args.json:
            print_json(data)
            return 0
        out.write(f"{data['total']} dead letter(s)\n")
        for d in data["dead_letters"]:
            out.write(
                f"{d['subscriber']:<20} {d['webhook_id']}  {d['type']:<20} {d['payment_id']}  "
                f"attempts {d['attempts']}  last {d['last_status'] or d['last_error']}\n"
            )
        return 0
    if args.action == "show":
        print_json(client.call("GET", f"/dead-letters/{args.subscriber}/{args.webhook_id}"))
        return 0
    data = _replay(client, args)
    if args.json:
        print_json(data)
    else:
        for item in data["replayed"]:
            out.write(f"replayed {item['subscriber']} {item['webhook_id']}\n")
        out.write(f"{len(data['replayed'])} replayed\n")
    return 0


def _replay(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.webhook_id:
        return client.call("POST", f"/dead-letters/{args.subscriber}/{args.webhook_id}/replay")
    body: dict[str, Any] = {}
    if args.subscriber:
        body["subscriber"] = args.subscriber
    if args.since:
        body["since"] = args.since
    elif args.all:
        body["since"] = 0
    if not body:
        raise AdminCallError("replay needs SUBSCRIBER [WEBHOOK_ID], --since TIME, or --all")
    return client.call("POST", "/dead-letters/replay", body)


KINDS: dict[str, Callable[[AdminClient, argparse.Namespace], int]] = {"deliveries": _deliveries}


def run(args: argparse.Namespace) -> int:
    handler = KINDS.get(args.kind)
    if handler is None:
        return fail(f"unknown --kind {args.kind!r}; available: {', '.join(sorted(KINDS))}")
    client = AdminClient.from_args(args)
    try:
        return handler(client, args)
    except AdminCallError as exc:
        return fail(str(exc))
    finally:
        client.close()
