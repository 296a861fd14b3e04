"""``kartahook trigger <completed|failed|canceled> [--source CODE]``: one sandbox payment driven
to that outcome, as ``stripe trigger`` does.

It creates a payment in the KartaPay sandbox, plans its outcome there (``POST
/_sandbox/payments/{id}/outcome``: ``failed`` fails this one payment, whatever the sandbox's
``fail_ratio``; ``canceled`` cancels it once submitted), submits it with ``--source``'s plan code
(default ``STR``: the sandbox then sends Stripe's webhooks, beside KartaPay's own), prints its id
and follows it in kartahook's Redis until kartahook has recorded that status (each status as it
is recorded), or stops after ``--timeout`` with one line saying what was recorded last.

The sandbox's URL is ``--kartapay-url``, else ``KARTAHOOK_KARTAPAY_URL``, else the running
``kartahook run``'s (``var/run.json``), else the sandbox's default; Redis likewise
(``--redis-url``, ``KARTAHOOK_REDIS_URL``, ``run.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
from redis.exceptions import RedisError

from kartahook.errors import USAGE, CliError
from kartahook.run_state import DEFAULT_VAR_DIR, discover, live_run_state
from kartahook.stack import SOURCE_PLAN_CODES
from service.kartapay import GATEWAY_CODES, GatewayCode
from service.settings import Settings
from service.store.client import check_url, error_line, redis_client
from service.store.layout import payment_state_key

OUTCOMES = ("completed", "failed", "canceled")
PLAN_SOURCES = {code: source for source, code in SOURCE_PLAN_CODES.items() if code}
POLL_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outcome", choices=OUTCOMES, help="where the payment ends")
    parser.add_argument(
        "--source",
        choices=GATEWAY_CODES,
        default="STR",
        help="the plan code it is submitted with: its provider's webhooks are sent too "
        "(default STR)",
    )
    parser.add_argument("--kartapay-url", help="the sandbox's base URL")
    parser.add_argument("--redis-url", help="kartahook's Redis, where the payment is followed")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for it (default 60)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=DEFAULT_VAR_DIR,
        help="where a running `kartahook run` keeps run.json (default ./var)",
    )


def trigger_claim() -> dict[str, Any]:
    """The body of a triggered payment."""
    amount = {"value": "12.34", "currency": "EUR"}
    return {
        "purchase": {
            "total": dict(amount),
            "items": [{"name": "Triggered", "quantity": "1", "amount": dict(amount)}],
        },
        "payer": {"fullName": "Trigger Payer", "email": "trigger@example.com"},
        "context": {"locale": "en-US", "channels": ["trigger"]},
        "clientNote": "kartahook trigger",
    }


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise CliError("--timeout must be positive", USAGE)
    settings = Settings()
    state = live_run_state(args.var_dir)
    sandbox_url = (
        discover(args.kartapay_url, "KARTAHOOK_KARTAPAY_URL", state, "sandbox_url", None)
        or settings.kartapay_url
    )
    redis_url = discover(args.redis_url, "KARTAHOOK_REDIS_URL", state, "redis_url", None)
    if not redis_url:
        raise CliError(
            "no Redis to follow the payment in: pass --redis-url, set KARTAHOOK_REDIS_URL or "
            "start `make run`",
            USAGE,
        )
    try:
        check_url(redis_url)
    except ValueError as exc:
        raise CliError(f"bad Redis URL: {exc}", USAGE) from None
    token = settings.kartapay_token.get_secret_value()
    return asyncio.run(_trigger(args, sandbox_url, token, redis_url))


async def _trigger(args: argparse.Namespace, sandbox_url: str, token: str, redis_url: str) -> int:
    from service.kartapay import KartaPayClient

    outcome: str = args.outcome
    source = cast(GatewayCode, args.source)
    redis = redis_client(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        await _ping(redis)
        async with KartaPayClient(sandbox_url, token) as kartapay:
            record = await kartapay.create(trigger_claim())
            await _plan_outcome(sandbox_url, record.id, outcome)
            await kartapay.submit(record.id, source)
        started = time.monotonic()
        if not args.json:
            print(
                f"payment {record.id}: submitted with plan {source} "
                f"({PLAN_SOURCES.get(source, '?')}), planned outcome {outcome}",
                flush=True,
            )
        recorded = await _follow(redis, record.id, outcome, args.timeout, args.json)
    finally:
        await redis.aclose()
    elapsed = time.monotonic() - started
    if args.json:
        print(
            orjson.dumps(
                {
                    "payment_id": record.id,
                    "outcome": outcome,
                    "source": source,
                    "recorded": recorded,
                    "elapsed_s": round(elapsed, 3),
                }
            ).decode()
        )
    else:
        print(f"payment {record.id}: {outcome} recorded by kartahook ({elapsed:.1f} s)")
    return 0


async def _ping(redis: Any) -> None:
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise CliError(f"cannot read Redis: {error_line(exc)}") from None


async def _plan_outcome(sandbox_url: str, payment_id: str, outcome: str) -> None:
    """Ask the sandbox to end this payment in ``outcome`` (its control endpoint)."""
    url = f"{sandbox_url.rstrip('/')}/_sandbox/payments/{payment_id}/outcome"
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        answer = await http.post(url, json={"outcome": outcome})
    if answer.status_code == 404 and "outcome" not in answer.text:
        raise CliError(f"{sandbox_url} is not kartahook's sandbox (no /_sandbox control endpoints)")
    if answer.status_code != 200:
        raise CliError(f"the sandbox refused the outcome: {answer.status_code} {answer.text[:200]}")


async def _follow(
    redis: Any, payment_id: str, outcome: str, timeout_s: float, quiet: bool
) -> list[str]:
    """Poll the payment's recorded state until it is ``outcome``; the statuses seen in order."""
    key = payment_state_key(payment_id)
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = await redis.hget(key, "status")
        except (RedisError, OSError) as exc:
            raise CliError(f"cannot read Redis: {error_line(exc)}") from None
        if status is not None:
            text = status.decode() if isinstance(status, bytes) else str(status)
            if not seen or seen[-1] != text:
                seen.append(text)
                if not quiet:
                    print(f"  recorded: {text}", flush=True)
            if text == outcome:
                return seen
            if text in OUTCOMES:
                raise CliError(f"payment {payment_id}: recorded as {text}, not {outcome}")
        if time.monotonic() > deadline:
            last = seen[-1] if seen else "nothing"
            raise CliError(
                f"payment {payment_id}: {outcome} not recorded after {timeout_s:.0f} s (last "
                f"recorded: {last}); is a worker running? (`kartahook status`)"
            )
        await asyncio.sleep(POLL_S)
