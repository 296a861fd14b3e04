"""The KartaPay client against the live sandbox on 127.0.0.1: every endpoint and every error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox.kartapay_api import SandboxConfig, create_app
from service.kartapay import (
    Amount,
    BadRequestError,
    Claim,
    Context,
    KartaPayClient,
    NotFoundError,
    Payer,
    PaymentRecord,
    PaymentStatus,
    Purchase,
    PurchaseItem,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from service.store.server import free_port
from tests.support import serve_app, wait_for

TOKEN = "live-test-token"
LIFECYCLE_TIMEOUT_S = 30.0


@pytest.fixture
async def sandbox_url() -> AsyncIterator[str]:
    """A sandbox served by uvicorn on 127.0.0.1, with quick lifecycle steps and no faults."""
    config = SandboxConfig(token=TOKEN, step_delay_s=0.05, seed=7)
    async with serve_app(create_app(config)) as url:
        yield url


@pytest.fixture
async def client(sandbox_url: str) -> AsyncIterator[KartaPayClient]:
    """A client of the live sandbox with the valid token."""
    async with KartaPayClient(sandbox_url, TOKEN, language="fr-FR", timeout=10.0) as kartapay:
        yield kartapay


async def set_faults(sandbox_url: str, **faults: Any) -> None:
    """Change the sandbox's injected faults at runtime (POST /_sandbox/faults)."""
    async with httpx.AsyncClient(base_url=sandbox_url) as control:
        response = await control.post("/_sandbox/faults", json=faults)
        response.raise_for_status()


def claim(client_id: str, value: str = "10.00") -> Claim:
    """A full claim: context, payer, items and redirect URLs."""
    return Claim(
        context=Context(locale="fr-FR", channels=["web", "eu"], redirectMode="hosted"),
        payer=Payer(fullName="Ann Rakoto", email="ann@example.com", phone="+261341234567"),
        purchase=Purchase(
            total=Amount(value=value, currency="EUR"),
            items=[
                PurchaseItem(name="tea", quantity="2", amount=Amount(value=value, currency="EUR"))
            ],
        ),
        clientId=client_id,
        clientNote="live test",
        cancelUrl="https://shop.example/cancel",
        successUrl="https://shop.example/success",
    )


async def wait_for_status(
    client: KartaPayClient, payment_id: str, statuses: set[PaymentStatus]
) -> PaymentRecord:
    """Poll get() until the payment reaches one of ``statuses``; return that state."""
    latest: list[PaymentRecord] = []

    async def reached() -> bool:
        latest.append(await client.get(payment_id))
        return latest[-1].status in statuses

    await wait_for(reached, timeout_s=LIFECYCLE_TIMEOUT_S, interval_s=0.05)
    return latest[-1]


async def test_create_then_get_returns_the_payment_with_its_id(client: KartaPayClient) -> None:
    """create() returns the new payment in init with its id; get() reads it back under that id."""
    created = await client.create(claim("order-1"))
    assert created.id
    assert created.status is PaymentStatus.INIT
    assert created.payment.createdAt is not None
    assert created.next

    fetched = await client.get(created.id)
    assert fetched.id == created.id
    assert fetched.payment.clientId == "order-1"
    assert fetched.payment.payer is not None
    assert fetched.payment.payer.fullName == "Ann Rakoto"
    assert fetched.payment.context is not None
    assert fetched.payment.context.channels == ["web", "eu"]
    assert fetched.to_json()["id"] == created.id
    assert fetched.to_json()["purchase"]["items"][0]["name"] == "tea"


async def test_list_sorts_and_pages(client: KartaPayClient) -> None:
    """list() honours sort, desc, limit and offset, and reports total."""
    for index in (3, 1, 4, 0, 2):
        await client.create(claim(f"order-{index}", value=f"{index}0.00"))

    page = await client.list(sort=["clientId"], limit=2, offset=1)
    assert page.total == 5
    assert page.limit == 2 and page.offset == 1
    assert [p.clientId for p in page.data] == ["order-1", "order-2"]
    assert page.prev and page.next

    page = await client.list(desc=["clientId"], limit=3)
    assert [p.clientId for p in page.data] == ["order-4", "order-3", "order-2"]

    page = await client.list(sort=["status", "purchase.total.value"], desc=["purchase.total.value"])
    assert [p.clientId for p in page.data] == [f"order-{i}" for i in (4, 3, 2, 1, 0)]


async def test_iter_all_walks_every_page(client: KartaPayClient) -> None:
    """iter_all() yields every payment once, in order, across several pages."""
    for index in range(7):
        await client.create(claim(f"order-{index}"))

    walked = [payment async for payment in client.iter_all(sort=["clientId"], page_size=3)]
    assert [p.clientId for p in walked] == [f"order-{i}" for i in range(7)]


async def test_cancel_moves_the_payment_to_canceled(client: KartaPayClient) -> None:
    """cancel() answers the payment in canceled with canceledAt set; get() agrees."""
    created = await client.create(claim("order-c"))
    canceled = await client.cancel(created.id)
    assert canceled.id == created.id
    assert canceled.status is PaymentStatus.CANCELED
    assert canceled.payment.canceledAt is not None
    assert (await client.get(created.id)).status is PaymentStatus.CANCELED


async def test_submit_with_source_then_the_payment_completes(client: KartaPayClient) -> None:
    """submit(id, source) moves the payment to submitted; get() then sees it reach completed."""
    created = await client.create(claim("order-s"))
    submitted = await client.submit(created.id, "STR")
    assert submitted.id == created.id
    assert submitted.status is PaymentStatus.SUBMITTED
    assert submitted.payment.submittedAt is not None
    assert submitted.payment.plan is not None and submitted.payment.plan.source == "STR"

    done = await wait_for_status(client, created.id, {PaymentStatus.COMPLETED})
    assert done.payment.completedAt is not None and done.payment.capturedAt is not None


async def test_cancel_after_approval_raises_bad_request(client: KartaPayClient) -> None:
    """A cancel refused by the API (after approval) raises BadRequestError with its reason."""
    created = await client.create(claim("order-late"))
    await client.submit(created.id, "PYP")
    passed = {PaymentStatus.APPROVED, PaymentStatus.CAPTURED, PaymentStatus.COMPLETED}
    await wait_for_status(client, created.id, passed)
    with pytest.raises(BadRequestError) as caught:
        await client.cancel(created.id)
    assert caught.value.status_code == 400
    assert caught.value.detail and "cannot be canceled" in caught.value.detail


async def test_invalid_claim_raises_bad_request(client: KartaPayClient) -> None:
    """A claim without purchase.total is refused with 400, raised as BadRequestError."""
    with pytest.raises(BadRequestError) as caught:
        await client.create({"purchase": {"items": []}})
    assert caught.value.status_code == 400


async def test_bad_paging_raises_bad_request(client: KartaPayClient) -> None:
    """A limit the API refuses (0) raises BadRequestError."""
    with pytest.raises(BadRequestError):
        await client.list(limit=0)


async def test_wrong_token_raises_unauthorized(sandbox_url: str) -> None:
    """A wrong Bearer token gets 401, raised as UnauthorizedError without the token in it."""
    async with KartaPayClient(sandbox_url, "not-the-token") as intruder:
        with pytest.raises(UnauthorizedError) as caught:
            await intruder.list()
        with pytest.raises(UnauthorizedError):
            await intruder.get("anything")
    assert caught.value.status_code == 401
    assert "not-the-token" not in str(caught.value)


async def test_unknown_id_raises_not_found(client: KartaPayClient) -> None:
    """An unknown payment id gets 404 on read, cancel and submit, raised as NotFoundError."""
    with pytest.raises(NotFoundError) as caught:
        await client.get("no-such-payment")
    assert caught.value.status_code == 404
    with pytest.raises(NotFoundError):
        await client.cancel("no-such-payment")
    with pytest.raises(NotFoundError):
        await client.submit("no-such-payment", "HOL")


async def test_429_raises_rate_limited_with_retry_after(
    client: KartaPayClient, sandbox_url: str
) -> None:
    """Injected 429s raise RateLimitedError carrying the sandbox's Retry-After in seconds."""
    created = await client.create(claim("order-429"))
    await set_faults(sandbox_url, error_429_ratio=1.0, retry_after_s=7)
    with pytest.raises(RateLimitedError) as caught:
        await client.get(created.id)
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 7.0
    with pytest.raises(RateLimitedError):
        await client.list()

    await set_faults(sandbox_url, error_429_ratio=0.0)
    assert (await client.get(created.id)).id == created.id


async def test_500_raises_server_error(client: KartaPayClient, sandbox_url: str) -> None:
    """Injected 500s raise ServerError with status 500, on every endpoint."""
    created = await client.create(claim("order-500"))
    await set_faults(sandbox_url, error_500_ratio=1.0)
    with pytest.raises(ServerError) as caught:
        await client.get(created.id)
    assert caught.value.status_code == 500
    with pytest.raises(ServerError):
        await client.submit(created.id, "MVM")
    with pytest.raises(ServerError):
        await client.create(claim("order-500b"))


async def test_slow_answer_raises_request_timeout(sandbox_url: str) -> None:
    """An answer slower than the client's read timeout raises RequestTimeoutError."""
    await set_faults(sandbox_url, latency_s=2.0)
    async with KartaPayClient(sandbox_url, TOKEN, timeout=0.2) as impatient:
        with pytest.raises(RequestTimeoutError):
            await impatient.list()
    await set_faults(sandbox_url, latency_s=0.0)


async def test_refused_connection_raises_transport_error() -> None:
    """Nothing listening on the port: TransportError, not a timeout."""
    async with KartaPayClient(f"http://127.0.0.1:{free_port()}", TOKEN) as nowhere:
        with pytest.raises(TransportError) as caught:
            await nowhere.get("pay_1")
    assert not isinstance(caught.value, RequestTimeoutError)
