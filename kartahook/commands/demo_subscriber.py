"""``kartahook demo-subscriber``: a subscriber that verifies, deduplicates and lists deliveries."""

from __future__ import annotations

import argparse
import os

import uvicorn

from service.logging import configure_logging
from service.settings import Settings

SECRET_ENV = "KARTAHOOK_DEMO_SUBSCRIBER_SECRET"  # noqa: S105 (a variable name, not a secret)


def ratio(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8702, help="port to listen on")
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        help=f"the whsec_ secret deliveries are signed with (default: ${SECRET_ENV})",
    )
    parser.add_argument("--keep", type=int, default=1000, help="how many deliveries to list")
    parser.add_argument(
        "--keep-raw",
        action="store_true",
        help="also list each delivery's body and webhook-* headers (to verify them elsewhere)",
    )
    parser.add_argument(
        "--fail-ratio",
        type=ratio,
        default=0.0,
        help="answer 500 to this share of the deliveries (0 to 1; default 0): a failing "
        "subscriber, to see retries, dead letters and the circuit breaker",
    )


def run(args: argparse.Namespace) -> int:
    from sandbox.demo_subscriber import create_app

    if not args.secret:
        raise SystemExit(f"demo-subscriber: give --secret whsec_… or set {SECRET_ENV}")
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(
        args.secret, keep=args.keep, keep_raw=args.keep_raw, fail_ratio=args.fail_ratio
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False, lifespan="off"
    )
    return 0
