"""``kartahook demo``: drive demo payments through a running stack and show their deliveries.

Options win; then ``KARTAHOOK_KARTAPAY_URL`` and ``KARTAHOOK_DEMO_SUBSCRIBER_URL``; then the
stack of a running ``kartahook run`` (``./var/run.json``, :mod:`kartahook.run_state`); then the
defaults (the sandbox's, and the demo subscriber at http://127.0.0.1:8702).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from kartahook.errors import USAGE, CliError
from kartahook.run_state import DEFAULT_VAR_DIR, discover, live_run_state
from service.settings import Settings

DEFAULT_SUBSCRIBER_URL = "http://127.0.0.1:8702"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--payments", type=int, default=5, help="how many payments (default 5)")
    parser.add_argument("--kartapay-url", help="KartaPay API (sandbox) base URL")
    parser.add_argument(
        "--subscriber-url", help="demo subscriber base URL (env KARTAHOOK_DEMO_SUBSCRIBER_URL)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the deliveries"
    )
    parser.add_argument(
        "--var-dir", type=Path, default=DEFAULT_VAR_DIR, help="where kartahook run keeps run.json"
    )


def run(args: argparse.Namespace) -> int:
    from kartahook.demo import delivery_line, run_demo
    from service.kartapay import KartaPayClient

    settings = Settings()
    state = live_run_state(args.var_dir)
    kartapay_url = (
        discover(args.kartapay_url, "KARTAHOOK_KARTAPAY_URL", state, "sandbox_url", None)
        or settings.kartapay_url
    )
    subscriber_url = (
        discover(
            args.subscriber_url,
            "KARTAHOOK_DEMO_SUBSCRIBER_URL",
            state,
            "subscriber_url",
            DEFAULT_SUBSCRIBER_URL,
        )
        or DEFAULT_SUBSCRIBER_URL
    )
    if args.payments < 1:
        raise CliError("--payments must be at least 1", USAGE)
    print(f"demo: {args.payments} payments via {kartapay_url}, deliveries from {subscriber_url}")

    async def main() -> int:
        async with KartaPayClient(
            kartapay_url, settings.kartapay_token, language=settings.kartapay_language
        ) as kartapay:
            result = await run_demo(
                kartapay,
                subscriber_url,
                args.payments,
                timeout_s=args.timeout,
                on_delivery=lambda entry: print(delivery_line(entry), flush=True),
            )
        print("summary:")
        for line in result.summary_lines():
            print(line)
        if result.unfinished:
            print(f"demo: {len(result.unfinished)} payments unfinished after {args.timeout:.0f} s")
            return 1
        return 0

    # A failing KartaPay API or subscriber ends in the CLI's one error line (kartahook.errors).
    return asyncio.run(main())
