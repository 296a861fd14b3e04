"""``kartahook dlq list|show|replay`` over the admin API.

``--kind deliveries`` (the default) is the delivery dead letters of fan-out; ``--kind events`` is
processing's dead letters (events whose payment could not be read), where ``show`` and
``replay`` take the entry id in place of SUBSCRIBER and ``replay`` queues the event again.
``--kind`` and the connection options are accepted before or after the action.
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
    connection_options,
    print_json,
)

KIND_HELP = "which dead letters: deliveries (the default) or events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--kind", default="deliveries", help=KIND_HELP)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    options = connection_options(sub_level=True)
    options.add_argument("--kind", default=argparse.SUPPRESS, help=KIND_HELP)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              parents=[options])  # fmt: skip

    listing = action("list", "list dead letters, oldest first")
    listing.add_argument("--subscriber", help="only this subscriber's (deliveries)")
    listing.add_argument("--since", help="only since this ISO 8601 time with timezone, or epoch ms")
    listing.add_argument("--limit", type=int, default=100, help="how many at most (default 100)")
    show = action("show", "show one dead letter")
    show.add_argument("subscriber", help="subscriber id (deliveries) or entry id (events)")
    show.add_argument("webhook_id", nargs="?", help="the delivery's webhook id (deliveries)")
    replay = action(
        "replay", "replay one (SUBSCRIBER WEBHOOK_ID), a subscriber's, or all since a time"
    )
    replay.add_argument(
        "subscriber", nargs="?", help="subscriber id (deliveries) or entry id (events)"
    )
    replay.add_argument("webhook_id", nargs="?", help="the delivery's webhook id (deliveries)")
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
        if not args.webhook_id:
            raise AdminCallError("show needs SUBSCRIBER WEBHOOK_ID")
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


def _events(client: AdminClient, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.action == "list":
        data = client.call("GET", "/events/dead-letters", since=args.since, limit=args.limit)
        if args.json:
            print_json(data)
            return 0
        out.write(f"{data['total']} dead-lettered event(s)\n")
        for entry in data["dead_letters"]:
            hint = entry["hint"]
            out.write(
                f"{entry['id']}  {hint['source']:<10} {hint['event_id']}  {hint['payment_id']}  "
                f"{entry['reason']}: {entry['last_error']}\n"
            )
        return 0
    entry_id = args.subscriber
    if args.action == "show":
        if not entry_id:
            raise AdminCallError("show needs the entry id")
        print_json(client.call("GET", f"/events/dead-letters/{entry_id}"))
        return 0
    if entry_id:
        data = client.call("POST", f"/events/dead-letters/{entry_id}/retry")
    elif args.since or args.all:
        data = client.call("POST", "/events/dead-letters/retry", {"since": args.since or 0})
    else:
        raise AdminCallError("replay needs an entry id, --since TIME, or --all")
    if args.json:
        print_json(data)
    else:
        for retried in data["retried"]:
            out.write(f"queued again {retried}\n")
        out.write(f"{len(data['retried'])} queued again\n")
    return 0


KINDS: dict[str, Callable[[AdminClient, argparse.Namespace], int]] = {
    "deliveries": _deliveries,
    "events": _events,
}


def run(args: argparse.Namespace) -> int:
    handler = KINDS.get(args.kind)
    if handler is None:
        raise AdminCallError(f"unknown --kind {args.kind!r}; available: {', '.join(sorted(KINDS))}")
    client = AdminClient.from_args(args)
    try:
        return handler(client, args)
    finally:
        client.close()
