"""``kartahook demo``: drive demo payments through a running stack and show their deliveries.

By default it talks to the stack that ``kartahook run`` started (read from ``./var/run.json``),
else to ``KARTAHOOK_KARTAPAY_URL`` and the demo subscriber at ``KARTAHOOK_DEMO_SUBSCRIBER_URL``
(default http://127.0.0.1:8702).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from kartahook.errors import USAGE, CliError
from service.settings import Settings

DEFAULT_SUBSCRIBER_URL = "http://127.0.0.1:8702"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--payments", type=int, default=5, help="how many payments (default 5)")
    parser.add_argument("--kartapay-url", help="KartaPay API (sandbox) base URL")
    parser.add_argument(
        "--subscriber-url",
        default=os.environ.get("KARTAHOOK_DEMO_SUBSCRIBER_URL"),
        help="demo subscriber base URL (env KARTAHOOK_DEMO_SUBSCRIBER_URL)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the deliveries"
    )
    parser.add_argument(
        "--var-dir", type=Path, default=Path("var"), help="where kartahook run keeps run.json"
    )


def read_run_state(var_dir: Path) -> dict[str, Any]:
    """What ``kartahook run`` wrote about the stack it runs, or ``{}``."""
    try:
        state: dict[str, Any] = json.loads((var_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


def run(args: argparse.Namespace) -> int:
    from kartahook.demo import delivery_line, run_demo
    from service.kartapay import KartaPayClient

    settings = Settings()
    state = read_run_state(args.var_dir)
    kartapay_url = args.kartapay_url or state.get("sandbox_url") or settings.kartapay_url
    subscriber_url = args.subscriber_url or state.get("subscriber_url") or DEFAULT_SUBSCRIBER_URL
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
