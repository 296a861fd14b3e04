"""The send-time checks of a subscriber's URL (DESIGN "Delivery": delivery re-checks the
allowlist at send time, and never reaches kartahook's own listeners).

Before each attempt the runner asks :meth:`SendGuard.refusal`: the URL against the worker's
current ``KARTAHOOK_SUBSCRIBER_ALLOWLIST`` and against kartahook's own Redis (and Sentinels, and
the Sentinel primary), admin listener and worker metrics port, named by IP literal or by a name
of this machine. A refused subscriber is paused (``workers.delivery.runner``), not sent to.

Host names are checked on the addresses they resolve to. On the default (aiohttp) transport that
happens in the connect path (:class:`service.http_transport.GuardedResolver` calls
:meth:`SendGuard.address_refusal`), so the address checked is the one connected to. The httpx
transport has no such hook: there :meth:`refusal` resolves the name itself just before the
attempt, and a DNS answer that changes between that look-up and httpx's own is not seen (the
documented time-of-check/time-of-use gap of ``KARTAHOOK_DELIVERY_HTTP_TRANSPORT=httpx``).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from service.settings import Settings
from service.store.subscribers import (
    Subscriber,
    SubscriberError,
    check_url,
    forbidden_targets,
)
from service.targets import (
    Address,
    ForbiddenTargets,
    check_target,
    parse_address,
    resolve,
    url_target,
)

# How often the listeners' addresses (and the Sentinel primary) are looked up again.
TARGETS_REFRESH_S = 30.0
# Reason prefixes, shown as the paused subscriber's ``disabled_reason``.
OUTSIDE_ALLOWLIST = "outside_allowlist"
FORBIDDEN_TARGET = "forbidden_target"


class SendGuard:
    """One per worker: the allowlist and kartahook's own listeners, checked before each send."""

    def __init__(self, settings: Settings, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.targets = ForbiddenTargets()
        self._refreshed_at = float("-inf")
        self._verdicts: dict[str, str | None] = {}
        """Per URL, the verdict of the checks that need no DNS (cleared on refresh)."""

    async def refresh(self) -> None:
        """Look kartahook's listeners up again (their hosts, the Sentinel primary)."""
        self.targets = await forbidden_targets(self.settings, self.redis)
        self._verdicts = {}
        self._refreshed_at = time.monotonic()

    async def refusal(self, subscriber: Subscriber) -> str | None:
        """Why ``subscriber`` may not be sent to now (its ``disabled_reason``), or None."""
        if time.monotonic() - self._refreshed_at > TARGETS_REFRESH_S:
            await self.refresh()
        url = subscriber.url
        if url not in self._verdicts:
            self._verdicts[url] = self._static_refusal(url)
        reason = self._verdicts[url]
        if reason is None and self.settings.delivery_http_transport == "httpx":
            reason = await self.resolved_refusal(url)
        return reason

    def _static_refusal(self, url: str) -> str | None:
        try:
            check_url(url, self.settings.subscriber_allowlist)
        except SubscriberError as exc:
            if exc.code == "host_not_allowed":
                host, _ = url_target(url)
                return f"{OUTSIDE_ALLOWLIST}: host {host} is not in the allowlist"
            return None  # a malformed URL: the attempt fails and is recorded
        try:
            check_target(url, self.targets)
        except SubscriberError as exc:
            return f"{FORBIDDEN_TARGET}: {exc.message}"
        return None

    async def resolved_refusal(self, url: str) -> str | None:
        """The URL's host name resolved now, each address checked (for transports that cannot
        check in their connect path)."""
        host, port = url_target(url)
        if parse_address(host) is not None:
            return None  # a literal: checked without DNS already
        for address in await resolve(host, port):
            reason = self.targets.refusal(address, port)
            if reason is not None:
                return f"{FORBIDDEN_TARGET}: {host} resolves to {reason}"
        return None

    def address_refusal(self, address: Address, port: int) -> str | None:
        """For the connect path: why ``address:port`` may not be connected to, or None."""
        return self.targets.refusal(address, port)
