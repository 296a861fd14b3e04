"""Demo payments: create and submit them through the KartaPay API, then follow their deliveries.

Used by ``kartahook demo`` against a running stack and by ``kartahook run`` once it is up. The
deliveries are read from the demo subscriber's ``GET /received``; a payment is done when its
terminal status (``completed``, ``failed`` or ``canceled``) has arrived there.

Payment ``n`` is submitted with plan code ``GATEWAY_CODES[n % 6]``, so six payments go through
every plan code (``HOL HRM MVK MVM PYP STR``); the sandbox then sends that provider's webhooks
(and, unless told otherwise, KartaPay's own). The summary has a line per plan code, and
:func:`source_lines` one per source from the service's ``kartahook_webhooks_total``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.kartapay import GATEWAY_CODES, GatewayCode, KartaPayClient

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})
CREATE_CONCURRENCY = 16

Entry = dict[str, Any]


class ReceivedWatcher:
    """Reads the demo subscriber's ``GET /received`` and returns what is new since last time."""

    def __init__(self, subscriber_url: str, client: httpx.AsyncClient) -> None:
        self.url = subscriber_url.rstrip("/") + "/received"
        self.client = client
        self.last_seq = 0

    async def start_from_now(self) -> None:
        """Skip everything received so far."""
        listing = await self._get({})
        self.last_seq = int(listing["count"])

    async def new_entries(self) -> list[Entry]:
        listing = await self._get({"since": str(self.last_seq)})
        if int(listing["count"]) < self.last_seq:  # the subscriber restarted: read it all again
            self.last_seq = 0
            listing = await self._get({})
        entries: list[Entry] = listing["received"]
        if entries:
            self.last_seq = int(entries[-1]["seq"])
        return entries

    async def for_payment(self, payment_id: str) -> list[Entry]:
        listing = await self._get({"payment_id": payment_id})
        entries: list[Entry] = listing["received"]
        return entries

    async def _get(self, params: dict[str, str]) -> dict[str, Any]:
        response = await self.client.get(self.url, params=params)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


@dataclass
class DemoResult:
    """What the demo payments went through, as the demo subscriber saw it."""

    statuses: dict[str, list[str]]
    duplicates: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    last_seq: int = 0  # the demo subscriber's seq of the last delivery looked at
    plans: dict[str, str] = field(default_factory=dict)  # payment id -> plan code submitted

    @property
    def unfinished(self) -> list[str]:
        return [pid for pid, seen in self.statuses.items() if not TERMINAL_STATUSES & set(seen)]

    @property
    def deliveries(self) -> int:
        return sum(len(seen) for seen in self.statuses.values())

    def summary_lines(self) -> list[str]:
        lines = [f"  {pid}{self._plan(pid)}  {' -> '.join(seen) or '(nothing yet)'}"
                 + self._dups(pid) for pid, seen in self.statuses.items()]  # fmt: skip
        finals: dict[str, int] = {}
        for seen in self.statuses.values():
            final = next((s for s in reversed(seen) if s in TERMINAL_STATUSES), "unfinished")
            finals[final] = finals.get(final, 0) + 1
        lines.extend(self.plan_lines())
        outcome = ", ".join(f"{count} {status}" for status, count in sorted(finals.items()))
        lines.append(
            f"  {len(self.statuses)} payments ({outcome}), {self.deliveries} deliveries, "
            f"{sum(self.duplicates.values())} duplicates, {self.elapsed_s:.1f} s"
        )
        return lines

    def plan_lines(self) -> list[str]:
        """One line per plan code: its payments, their deliveries and final statuses."""
        lines = []
        for code in sorted(set(self.plans.values())):
            ids = [pid for pid, plan in self.plans.items() if plan == code]
            seen = [self.statuses.get(pid, []) for pid in ids]
            finals: dict[str, int] = {}
            for statuses in seen:
                final = next(
                    (s for s in reversed(statuses) if s in TERMINAL_STATUSES), "unfinished"
                )
                finals[final] = finals.get(final, 0) + 1
            outcome = ", ".join(f"{count} {status}" for status, count in sorted(finals.items()))
            deliveries = sum(len(statuses) for statuses in seen)
            lines.append(f"  plan {code}: {len(ids)} payments ({outcome}), {deliveries} deliveries")
        return lines

    def _plan(self, payment_id: str) -> str:
        code = self.plans.get(payment_id)
        return f" ({code})" if code else ""

    def _dups(self, payment_id: str) -> str:
        count = self.duplicates.get(payment_id, 0)
        return f"  ({count} duplicate{'s' if count != 1 else ''})" if count else ""


def demo_claim(n: int) -> dict[str, Any]:
    """The body of the ``n``-th demo payment."""
    cents = 1000 + 137 * n
    return {
        "purchase": {
            "total": {"value": f"{cents // 100}.{cents % 100:02d}", "currency": "EUR"},
            "items": [
                {
                    "name": f"Demo item {n}",
                    "quantity": "1",
                    "amount": {"value": f"{cents // 100}.{cents % 100:02d}", "currency": "EUR"},
                }
            ],
        },
        "payer": {"fullName": f"Demo Payer {n}", "email": f"payer{n}@example.com"},
        "context": {"locale": "en-US", "channels": ["demo"]},
        "clientNote": "kartahook demo",
    }


def plan_code(n: int) -> GatewayCode:
    """The plan code the ``n``-th demo payment is submitted with: every code in turn."""
    return GATEWAY_CODES[n % len(GATEWAY_CODES)]


async def create_and_submit_plans(
    kartapay: KartaPayClient,
    payments: int,
    on_submitted: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Create ``payments`` payments and submit each with :func:`plan_code`; return payment id
    -> plan code, in creation order. ``on_submitted(payment id, plan code)`` is called as each
    one is submitted."""
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(n: int) -> tuple[str, str]:
        async with limit:
            record = await kartapay.create(demo_claim(n))
            await kartapay.submit(record.id, plan_code(n))
            if on_submitted is not None:
                on_submitted(record.id, plan_code(n))
            return record.id, plan_code(n)

    return dict(await asyncio.gather(*(one(n) for n in range(1, payments + 1))))


async def create_and_submit(kartapay: KartaPayClient, payments: int) -> list[str]:
    """Create ``payments`` payments and submit each; return their ids in creation order."""
    return list(await create_and_submit_plans(kartapay, payments))


_WEBHOOKS_LINE = re.compile(r"^kartahook_webhooks_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def webhook_counts(metrics_text: str) -> dict[str, dict[str, int]]:
    """``kartahook_webhooks_total`` of a ``/metrics`` page: source -> outcome -> count."""
    counts: dict[str, dict[str, int]] = {}
    for line in metrics_text.splitlines():
        match = _WEBHOOKS_LINE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        per_source = counts.setdefault(labels.get("source", "?"), {})
        outcome = labels.get("outcome", "?")
        per_source[outcome] = per_source.get(outcome, 0) + int(float(match["value"]))
    return counts


def source_lines(counts: dict[str, dict[str, int]], sources: Sequence[str]) -> list[str]:
    """One line per source: webhooks accepted, duplicates, and any refused (by outcome)."""
    lines = []
    for source in [*sources, *sorted(set(counts) - set(sources))]:
        outcomes = dict(counts.get(source, {}))
        accepted = outcomes.pop("accepted", 0)
        duplicate = outcomes.pop("duplicate", 0)
        refused = "".join(f", {n} {outcome}" for outcome, n in sorted(outcomes.items()))
        lines.append(f"  {source:<9} {accepted} accepted, {duplicate} duplicates{refused}")
    return lines


async def follow(
    watcher: ReceivedWatcher,
    payment_ids: Sequence[str],
    *,
    timeout_s: float,
    on_delivery: Callable[[Entry], None] | None = None,
    started: float | None = None,
) -> DemoResult:
    """Collect the deliveries of ``payment_ids`` until each has a terminal status, or timeout."""
    started = time.monotonic() if started is None else started
    result = DemoResult(statuses={pid: [] for pid in payment_ids})
    deadline = time.monotonic() + timeout_s
    while result.unfinished and time.monotonic() < deadline:
        for entry in await watcher.new_entries():
            seen = result.statuses.get(str(entry.get("payment_id")))
            if seen is None:
                continue
            seen.append(str(entry.get("status")))
            if on_delivery is not None:
                on_delivery(entry)
        if result.unfinished:
            await asyncio.sleep(0.2)
    result.elapsed_s = time.monotonic() - started
    result.last_seq = watcher.last_seq
    for pid in payment_ids:
        entries = await watcher.for_payment(pid)
        result.duplicates[pid] = sum(int(entry["duplicates"]) for entry in entries)
    return result


async def run_demo(
    kartapay: KartaPayClient,
    subscriber_url: str,
    payments: int,
    *,
    timeout_s: float = 120.0,
    on_delivery: Callable[[Entry], None] | None = None,
    on_submitted: Callable[[str, str], None] | None = None,
) -> DemoResult:
    """Drive ``payments`` demo payments through their lifecycle and follow their deliveries."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        watcher = ReceivedWatcher(subscriber_url, http)
        await watcher.start_from_now()
        started = time.monotonic()
        plans = await create_and_submit_plans(kartapay, payments, on_submitted)
        result = await follow(
            watcher, list(plans), timeout_s=timeout_s, on_delivery=on_delivery, started=started
        )
        result.plans = plans
        return result


def delivery_line(entry: Entry) -> str:
    """One human-readable line for a delivery listed by the demo subscriber."""
    at = str(entry.get("received_at", ""))[11:23]
    dup = f"  (+{entry['duplicates']} duplicates)" if entry.get("duplicates") else ""
    return (
        f"  {at}  delivered  {entry.get('type') or entry.get('status')}"
        f"  payment {entry.get('payment_id')}  webhook-id {entry.get('webhook_id')}{dup}"
    )
