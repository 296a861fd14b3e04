"""Webhooks of the sandbox: every change of status, POSTed to the configured URL, signed the
Standard Webhooks way, in the ``kartapay`` source format; and, for a payment submitted with a
plan code, that provider's webhook (``sandbox.providers``) to kartahook's
``/v1/webhooks/<source>``, beside or instead of it (``webhooks``: kartapay, provider, both).

API handlers only put events on a queue (never blocking). One dispatcher task, started in the
lifespan, takes them off and starts one delivery task per event. A delivery retries with
exponential backoff when the receiver fails, reusing the same ``webhook-id`` and body.

Options, for both kinds: ``duplicate_webhooks`` sends every event twice with the same id;
``out_of_order_webhooks`` collects the events of a short window and sends them shuffled, each
first attempt finishing before the next starts, so they really arrive in the shuffled order;
``drop_statuses`` sends nothing for the changes to those statuses.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import structlog

from sandbox.config import SandboxConfig
from sandbox.payments_store import StatusChange, utc_now_iso
from sandbox.providers import Provider, ProviderEvent, event_for
from service.domain.signing import sign_headers

log = structlog.get_logger("sandbox.webhooks")


KARTAPAY = "kartapay"


@dataclass(frozen=True)
class WebhookEvent:
    """One event to send: its id (the ``webhook-id``, or the provider's event id), type and
    exact body; ``provider`` holds the rest of a provider's request."""

    webhook_id: str
    type: str
    payment_id: str
    body: bytes
    provider: ProviderEvent | None = None

    @property
    def source(self) -> str:
        return KARTAPAY if self.provider is None else self.provider.source

    @classmethod
    def of_provider(cls, event: ProviderEvent) -> WebhookEvent:
        return cls(event.event_id, event.type, event.payment_id, event.body, event)


@dataclass
class SendRecord:
    """One copy of an event and what became of it, for ``GET /_sandbox/webhooks``."""

    webhook_id: str
    type: str
    payment_id: str
    copy: int
    source: str = KARTAPAY
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False
    done: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "webhookId": self.webhook_id,
            "source": self.source,
            "type": self.type,
            "paymentId": self.payment_id,
            "copy": self.copy,
            "attempts": list(self.attempts),
            "delivered": self.delivered,
            "done": self.done,
        }


def build_event(change: StatusChange, webhook_id: str) -> WebhookEvent:
    """The ``kartapay``-format event for a change of status."""
    body = orjson.dumps(
        {"type": f"payment.{change.status}", "timestamp": change.at, "data": change.payment}
    )
    return WebhookEvent(webhook_id, f"payment.{change.status}", change.payment_id, body)


class WebhookSender:
    """Queue, dispatcher and deliveries of the sandbox's webhooks."""

    def __init__(
        self,
        config: SandboxConfig,
        client: httpx.AsyncClient,
        rng: random.Random,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self._config = config
        self._providers = dict(providers or {})  # by plan code
        self._by_source = {p.source: p for p in self._providers.values()}
        self._client = client
        self._rng = rng
        self._queue: asyncio.Queue[WebhookEvent] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(config.webhook_concurrency)
        self._records: collections.deque[SendRecord] = collections.deque(
            maxlen=config.sent_log_size
        )

    @property
    def enabled(self) -> bool:
        return self._config.kartapay_webhooks or self.providers_enabled

    @property
    def providers_enabled(self) -> bool:
        return self._config.provider_webhooks and bool(self._providers)

    def new_webhook_id(self) -> str:
        return f"evt_{self._rng.getrandbits(96):024x}"

    def enqueue(self, change: StatusChange) -> None:
        """Queue the webhooks of a change of status; returns at once."""
        if not self.enabled:
            return
        if change.status in self._config.drop_statuses:
            log.info("webhooks dropped", payment_id=change.payment_id, status=change.status)
            return
        if self._config.kartapay_webhooks:
            self._queue.put_nowait(build_event(change, self.new_webhook_id()))
        if self.providers_enabled:
            found = event_for(self._providers, change, f"{self._rng.getrandbits(96):024x}")
            if found is not None:
                self._queue.put_nowait(WebhookEvent.of_provider(found[1]))

    def records(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        return [r.view() for r in self._records if payment_id in (None, r.payment_id)]

    def clear_records(self) -> None:
        self._records.clear()

    def backlog(self) -> int:
        """Events queued or being delivered."""
        return self._queue.qsize() + len(self._tasks)

    async def run(self) -> None:
        """The dispatcher: runs until cancelled, then cancels the deliveries in flight."""
        try:
            while True:
                event = await self._queue.get()
                if self._config.out_of_order_webhooks:
                    await self._dispatch_shuffled(await self._collect_window(event))
                else:
                    self._start(event)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect_window(self, first: WebhookEvent) -> list[WebhookEvent]:
        loop = asyncio.get_running_loop()
        batch = [first]
        deadline = loop.time() + self._config.out_of_order_window_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _dispatch_shuffled(self, batch: list[WebhookEvent]) -> None:
        shuffled = list(batch)
        self._rng.shuffle(shuffled)
        if len(shuffled) > 1 and shuffled == batch:
            shuffled.reverse()
        log.info("webhooks shuffled", count=len(shuffled))
        for event in shuffled:
            first_attempt = asyncio.Event()
            self._start(event, first_attempt)
            await first_attempt.wait()

    def _start(self, event: WebhookEvent, first_attempt: asyncio.Event | None = None) -> None:
        task = asyncio.create_task(self._deliver(event, first_attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: WebhookEvent, first_attempt: asyncio.Event | None) -> None:
        copies = 2 if self._config.duplicate_webhooks else 1
        try:
            for number in range(1, copies + 1):
                record = SendRecord(
                    event.webhook_id, event.type, event.payment_id, number, event.source
                )
                self._records.append(record)
                await self._send_with_retries(event, record, first_attempt)
        finally:
            if first_attempt is not None:
                first_attempt.set()

    async def _send_with_retries(
        self, event: WebhookEvent, record: SendRecord, first_attempt: asyncio.Event | None
    ) -> None:
        config = self._config
        for attempt in range(1, config.webhook_max_attempts + 1):
            status, error, retry_after = await self._attempt(event, attempt)
            record.attempts.append({"at": utc_now_iso(), "status": status, "error": error})
            if first_attempt is not None:
                first_attempt.set()
            if status is not None and 200 <= status < 300:
                record.delivered = True
                break
            if attempt == config.webhook_max_attempts:
                log.warning(
                    "webhook given up",
                    source=event.source,
                    webhook_id=event.webhook_id,
                    payment_id=event.payment_id,
                    attempt=attempt,
                )
                break
            delay = config.webhook_backoff_s * 2 ** (attempt - 1)
            delay *= 0.8 + 0.4 * self._rng.random()
            if retry_after is not None:
                delay = max(delay, retry_after)
            await asyncio.sleep(min(delay, config.webhook_backoff_max_s))
        record.done = True

    def _request(self, event: WebhookEvent) -> httpx.Request:
        """The request of one attempt, signed now."""
        config = self._config
        provider = event.provider
        if provider is None:
            assert config.webhook_url is not None and config.webhook_secret is not None
            headers = sign_headers(config.webhook_secret, event.webhook_id, event.body)
            headers["content-type"] = "application/json"
            return self._client.build_request(
                "POST", config.webhook_url, content=event.body, headers=headers
            )
        base = config.provider_base_url
        assert base is not None
        signer = self._by_source[provider.source]
        headers = {**dict(provider.headers), **signer.sign(provider, time.time())}
        return self._client.build_request(
            provider.method,
            base + provider.path,
            content=provider.body or None,
            params=list(provider.query) or None,
            headers=headers,
        )

    async def _attempt(
        self, event: WebhookEvent, attempt: int
    ) -> tuple[int | None, str | None, float | None]:
        started = time.perf_counter()
        async with self._limit:
            try:
                # Signed once a slot is free, so a signature's timestamp is fresh when it leaves.
                response = await self._client.send(self._request(event))
            except httpx.HTTPError as exc:
                error = type(exc).__name__
                log.warning(
                    "webhook attempt failed",
                    source=event.source,
                    webhook_id=event.webhook_id,
                    payment_id=event.payment_id,
                    type=event.type,
                    attempt=attempt,
                    error=error,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                return None, error, None
        log.info(
            "webhook sent",
            source=event.source,
            webhook_id=event.webhook_id,
            payment_id=event.payment_id,
            type=event.type,
            attempt=attempt,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        retry_after = response.headers.get("retry-after", "")
        return response.status_code, None, float(retry_after) if retry_after.isdigit() else None
