"""``kartahook sandbox``: the KartaPay API simulator (see docs/sandbox.md).

Its one valid Bearer token is ``KARTAHOOK_KARTAPAY_TOKEN``. Webhooks go to ``--webhook-url``,
signed with ``--webhook-secret`` (both may come from the environment instead).
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from service.logging import configure_logging
from service.settings import Settings

URL_ENV = "KARTAHOOK_SANDBOX_WEBHOOK_URL"
SECRET_ENV = "KARTAHOOK_SANDBOX_WEBHOOK_SECRET"  # noqa: S105 (a variable name, not a secret)


def _ratio(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    parser.add_argument(
        "--webhook-url", default=os.environ.get(URL_ENV), help=f"where webhooks go (${URL_ENV})"
    )
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(SECRET_ENV),
        help=f"whsec_ secret that signs the webhooks (${SECRET_ENV})",
    )
    parser.add_argument(
        "--step-delay", type=_non_negative, default=0.3, help="seconds between lifecycle steps"
    )
    parser.add_argument(
        "--fail-ratio", type=_ratio, default=0.0, help="share of submitted payments that fail"
    )
    parser.add_argument(
        "--error-500-ratio", type=_ratio, default=0.0, help="share of API requests answered 500"
    )
    parser.add_argument(
        "--error-429-ratio", type=_ratio, default=0.0, help="share of API requests answered 429"
    )
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 429 (s)")
    parser.add_argument(
        "--latency", type=_non_negative, default=0.0, help="seconds added to API requests"
    )
    parser.add_argument("--duplicates", action="store_true", help="send every webhook twice")
    parser.add_argument(
        "--out-of-order", action="store_true", help="shuffle webhooks within a short window"
    )
    parser.add_argument(
        "--webhook-attempts", type=int, default=5, help="attempts per webhook (default 5)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")


def run(args: argparse.Namespace) -> int:
    from sandbox.kartapay_api import SandboxConfig, create_app

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if bool(args.webhook_url) != bool(args.webhook_secret):
        raise SystemExit("sandbox: give both --webhook-url and --webhook-secret, or neither")
    try:
        config = SandboxConfig(
            token=settings.kartapay_token.get_secret_value(),
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            step_delay_s=args.step_delay,
            fail_ratio=args.fail_ratio,
            latency_s=args.latency,
            error_500_ratio=args.error_500_ratio,
            error_429_ratio=args.error_429_ratio,
            retry_after_s=args.retry_after,
            duplicate_webhooks=args.duplicates,
            out_of_order_webhooks=args.out_of_order,
            webhook_max_attempts=args.webhook_attempts,
            seed=args.seed,
        )
    except ValueError as exc:
        raise SystemExit(f"sandbox: {exc}") from None
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0
