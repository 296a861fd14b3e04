"""``kartahook listen --forward-to URL``: a throw-away subscriber for local development, as
``stripe listen`` is.

It starts an HTTP receiver on this machine (``--host``/``--port``, default 127.0.0.1 and a free
port), registers a subscriber pointing at it through the admin API (``POST /admin/subscribers``;
the admin URL and token are found as ``kartahook subscribers`` finds them, ``run.json`` of a
running ``kartahook run`` included), and for each delivery:

- verifies its signature with the subscriber's secret (a delivery that fails is answered 401 and
  not forwarded);
- prints one line: time, event type, payment id, ``webhook-id``, the forward's answer;
- forwards it to ``--forward-to`` with the same body and ``webhook-*`` headers (so the target
  verifies the same signature with the secret printed at start) and answers kartahook with the
  forward's status and body: a target that fails makes kartahook retry, as it would for a real
  subscriber. A target that cannot be reached is answered 502.

On Ctrl-C (SIGINT) or SIGTERM it removes the subscriber again and exits 0. A ``listen`` killed
with SIGKILL leaves its subscriber (``listen-…``) behind: ``kartahook subscribers remove ID``.

The receiver's URL is on loopback: the default ``KARTAHOOK_SUBSCRIBER_ALLOWLIST``
(``127.0.0.0/8, ::1/128, localhost``) accepts it, and kartahook's forbidden targets (its Redis,
admin listener and worker metrics port) are never where a free port lands. A service started
with a narrower allowlist refuses it (422 ``host_not_allowed``; the line says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kartahook.commands.admin_client import (
    AdminCallError,
    AdminClient,
    add_connection_arguments,
    admin_target,
)
from kartahook.errors import USAGE, CliError
from service.domain.signing import (
    MissingHeaderError,
    SignatureError,
    decode_secret,
    generate_secret,
    verify,
)

RECEIVER_PATH = "/listen"
FORWARDED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")
FORWARD_TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--forward-to",
        required=True,
        metavar="URL",
        help="where each delivery is forwarded (same body and webhook-* headers)",
    )
    parser.add_argument(
        "--events",
        nargs="+",
        default=["payment.*"],
        metavar="PATTERN",
        help="event types to receive (default payment.*)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the receiver listens on")
    parser.add_argument(
        "--port", type=int, default=0, help="port the receiver listens on (default: a free one)"
    )
    parser.add_argument("--id", help="the temporary subscriber's id (default listen-<random>)")
    parser.add_argument("--secret", help="its whsec_ signing secret (default: generated)")
    add_connection_arguments(parser)


def check_http_url(url: str, option: str) -> str:
    """``url`` when it is an absolute http(s) URL, else a :class:`CliError` (usage)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CliError(f"bad {option}: {exc}", USAGE) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"bad {option}: expected http(s)://HOST[:PORT]/PATH, got {url!r}", USAGE)
    return url


class Receiver:
    """The receiver's app: verify, print, forward, answer with the forward's answer."""

    def __init__(self, forward_to: str, http: httpx.AsyncClient, as_json: bool) -> None:
        self.forward_to = forward_to
        self.http = http
        self.as_json = as_json
        self.keys: list[bytes] = []
        self.received = 0

    def use_secret(self, secret: str) -> None:
        self.keys = [decode_secret(secret)]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.deliver, methods=["POST"])])

    async def deliver(self, request: Request) -> Response:
        body = await request.body()
        self.received += 1
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        event = parsed if isinstance(parsed, dict) else {}
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        line: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "type": event.get("type"),
            "payment_id": data.get("id") if isinstance(data, dict) else None,
            "webhook_id": request.headers.get("webhook-id"),
        }
        try:
            verify(self.keys, request.headers, body)
        except (MissingHeaderError, SignatureError) as exc:
            line.update(signature="invalid", forward_status=None, error=type(exc).__name__)
            self.show(line)
            return Response(b'{"error":"invalid signature"}', 401, media_type="application/json")
        line["signature"] = "ok"
        headers = {
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        }
        try:
            answer = await self.http.post(self.forward_to, content=body, headers=headers)
        except httpx.HTTPError as exc:
            line.update(forward_status=None, error=f"{type(exc).__name__}: {exc}"[:200])
            self.show(line)
            return Response(
                orjson.dumps({"error": "forward failed", "detail": line["error"]}),
                502,
                media_type="application/json",
            )
        line["forward_status"] = answer.status_code
        self.show(line)
        return Response(
            answer.content,
            answer.status_code,
            media_type=answer.headers.get("content-type", "application/octet-stream"),
        )

    def show(self, line: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
        else:
            at = str(line["at"])[11:23]
            if line["signature"] != "ok":
                outcome = f"signature INVALID ({line['error']}): answered 401, not forwarded"
            elif line["forward_status"] is None:
                outcome = f"forward failed: {line['error']}: answered 502"
            else:
                outcome = f"-> {line['forward_status']}"
            sys.stdout.write(
                f"{at}  {line['type'] or '?':<20} payment {line['payment_id'] or '?'}  "
                f"webhook-id {line['webhook_id'] or '?'}  {outcome}\n"
            )
        sys.stdout.flush()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: ``listen`` handles SIGINT/SIGTERM
    itself, to remove its subscriber before exiting."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run(args: argparse.Namespace) -> int:
    forward_to = check_http_url(args.forward_to, "--forward-to")
    if args.secret:
        try:
            decode_secret(args.secret)
        except ValueError as exc:
            raise CliError(f"bad --secret: {exc}", USAGE) from None
    url, token = admin_target(args)
    client = AdminClient(url, token)  # a malformed --admin-url fails here, before listening
    try:
        return asyncio.run(_listen(args, forward_to, client))
    finally:
        client.close()


async def _listen(args: argparse.Namespace, forward_to: str, client: AdminClient) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, trust_env=False) as http:
        receiver = Receiver(forward_to, http, args.json)
        config = uvicorn.Config(
            receiver.app(),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if serving.done():  # e.g. the port is taken
                    serving.result()
                    raise CliError(f"the receiver did not start on {args.host}:{args.port}")
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
            host = f"[{host}]" if ":" in host else host
            receiver_url = f"http://{host}:{port}{RECEIVER_PATH}"
            return await _registered(args, client, receiver, receiver_url, stop, serving)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving


async def _registered(
    args: argparse.Namespace,
    client: AdminClient,
    receiver: Receiver,
    receiver_url: str,
    stop: asyncio.Event,
    serving: asyncio.Task[None],
) -> int:
    subscriber_id = args.id or f"listen-{secrets.token_hex(4)}"
    # Chosen here, so the receiver verifies with it before the first delivery can arrive.
    secret = args.secret or generate_secret()
    receiver.use_secret(secret)
    body = {"id": subscriber_id, "url": receiver_url, "events": args.events, "secret": secret}
    try:
        await asyncio.to_thread(client.call, "POST", "/subscribers", body)
    except AdminCallError as exc:
        raise AdminCallError(f"cannot register the subscriber: {exc.message}") from None
    try:
        _announce(args, subscriber_id, receiver_url, secret)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, serving}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if serving.done() and not stop.is_set():
            raise CliError("the receiver stopped unexpectedly")
        return 0
    finally:
        await _remove(client, subscriber_id)


def _announce(args: argparse.Namespace, subscriber_id: str, receiver_url: str, secret: str) -> None:
    if args.json:
        sys.stdout.write(
            orjson.dumps(
                {
                    "subscriber": subscriber_id,
                    "url": receiver_url,
                    "forward_to": args.forward_to,
                    "events": args.events,
                    "secret": secret,
                }
            ).decode()
            + "\n"
        )
    else:
        sys.stdout.write(
            f"listening on {receiver_url} as subscriber {subscriber_id} "
            f"(events {', '.join(args.events)}), forwarding to {args.forward_to}\n"
            f"signing secret: {secret}  (the forwarded requests keep kartahook's signature; "
            "verify them with it)\n"
            "Ctrl-C removes the subscriber and stops.\n"
        )
    sys.stdout.flush()


async def _remove(client: AdminClient, subscriber_id: str) -> None:
    """Remove the temporary subscriber; say so, or say how to do it by hand."""
    try:
        await asyncio.to_thread(client.call, "DELETE", f"/subscribers/{subscriber_id}")
    except AdminCallError as exc:
        sys.stderr.write(
            f"kartahook listen: could not remove subscriber {subscriber_id} ({exc.message}); "
            f"run `kartahook subscribers remove {subscriber_id}`\n"
        )
        return
    sys.stdout.write(f"removed subscriber {subscriber_id}\n")
    sys.stdout.flush()
