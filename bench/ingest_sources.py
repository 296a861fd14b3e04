"""Requests of the provider sources for ``bench.ingest``: built and signed by the sandbox's own
provider modules (``sandbox/providers``), so the benchmark sends exactly what the sandbox sends
in a run, and a PayPal certificate server for the PayPal source.

Each source gets distinct events (a running counter makes every event id unique across rounds),
one per line of a file for ``bench/ingest.lua``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kartahook.stack import ProviderCredentials
from sandbox.payments_store import StatusChange
from sandbox.providers.base import Provider, ProviderSettings
from sandbox.providers.huri import Huri
from sandbox.providers.mvola_km import MVolaKM
from sandbox.providers.paypal import PayPal
from sandbox.providers.paypal_certs import PayPalCertService, serve
from sandbox.providers.stripe import Stripe

# The sources measured one by one (beside the bare endpoint and kartapay): HMAC (Stripe, Huri),
# RSA with a cached certificate (PayPal), HTTP Basic (MVola KM).
SOURCES = ("stripe", "huri", "paypal", "mvola-km")
HEADER_SEPARATOR = "\x1f"


@dataclass
class RequestMaker:
    """Builds signed requests of one source; ``next`` numbers the events."""

    provider: Provider
    next: int = field(default=0)

    def lines(self, count: int) -> Iterator[str]:
        now = time.time()
        at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
        for _ in range(count):
            n = self.next
            self.next += 1
            payment_id = f"pay_{n % 50000:05d}"
            payment = {
                "id": payment_id,
                "status": "captured",
                "purchase": {"total": {"value": "125.00", "currency": "EUR"}},
                "plan": {"source": self.provider.plan_code},
                "billing": {"providerId": f"prv_{n:012x}"},
                "submittedAt": at,
            }
            event = self.provider.build(
                StatusChange(payment_id, "captured", at, payment), f"{n:024x}"
            )
            headers = {**dict(event.headers), **self.provider.sign(event, now)}
            joined = HEADER_SEPARATOR.join(f"{name}: {value}" for name, value in headers.items())
            yield f"{event.method}\t{event.path}\t{joined}\t{event.body.decode()}\n"

    def write(self, path: Path, count: int) -> None:
        with path.open("w") as out:
            out.writelines(self.lines(count))


class PayPalCertServer:
    """The sandbox's PayPal certificate server (CA, signing leaf, https) on a thread of its own,
    so the synchronous benchmark can run beside it. ``service`` is set once it serves."""

    def __init__(self, ca_out: Path) -> None:
        self.settings = ProviderSettings(paypal_ca_out=str(ca_out))
        self.service: PayPalCertService | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="paypal-certs", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve(self.settings) as service:
                self.service = service
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> PayPalCertService:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.service is None:
            raise RuntimeError(f"the PayPal certificate server did not start: {self._error!r}")
        return self.service

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def makers(
    credentials: ProviderCredentials, paypal: PayPalCertService | None
) -> dict[str, RequestMaker]:
    """A request maker per measured source (PayPal only with its certificate server)."""
    found: dict[str, RequestMaker] = {
        "stripe": RequestMaker(Stripe(credentials.stripe_secret)),
        "huri": RequestMaker(Huri(credentials.huri_secret)),
        "mvola-km": RequestMaker(MVolaKM(credentials.basic_user, credentials.basic_password)),
    }
    if paypal is not None:
        provider = PayPal(credentials.paypal_webhook_id, paypal.signing_key, paypal.cert_url)
        found["paypal"] = RequestMaker(provider)
    return found
