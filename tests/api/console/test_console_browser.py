"""The console in a real headless browser (Debian's chromium, driven by Playwright through
``executable_path``; never a downloaded browser) against the whole stack as real processes:
Redis, ``kartahook serve`` (admin listener on), ``kartahook worker``, the sandbox, a demo
subscriber, and a subscriber of the test's own that fails until it is told to recover.

The operator signs in (a wrong token first), finds a delivered payment by its id and reads its
timeline, replays a dead letter once the failing subscriber recovers and sees it delivered,
and disables a subscriber. The page is saved to docs/console.png.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kartahook.stack import DemoSubscriber, Stack, Subscriber, isolated_env
from service.api.app import create_admin_app
from service.domain.subscribers import Subscriber as StoredSubscriber
from service.kartapay import KartaPayClient
from service.settings import Settings
from service.store.server import free_port
from service.store.subscribers import SubscriberStore
from tests.e2e.conftest import running
from tests.support import serve_app, wait_for

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "docs" / "console.png"
ADMIN_TOKEN = "console-browser-admin-token"
KARTAPAY_TOKEN = "console-browser-sandbox-token"
UI_TIMEOUT_MS = 60_000  # the page refreshes every 5 s; the machine may be busy


def chromium_path() -> str:
    """Debian's chromium (``make test`` installs it when missing); skip only without it."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        pytest.skip("chromium is not installed and could not be (make test runs apt-get for it)")
    return found


class Flaky:
    """A subscriber endpoint answering 500 until :meth:`recover`, then 200; remembers the
    ``webhook-id`` of every delivery it accepted."""

    def __init__(self) -> None:
        self.status = 500
        self.accepted: list[str] = []

    def recover(self) -> None:
        self.status = 200

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            await request.body()
            if self.status == 200:
                self.accepted.append(request.headers["webhook-id"])
            return JSONResponse({"status": self.status}, status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def watch(page: Any) -> list[str]:
    """Uncaught script errors and CSP violations of ``page``, collected as they happen."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    return problems


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    """The failing-then-recovering subscriber, served on 127.0.0.1; (it, its URL)."""
    endpoint = Flaky()
    port = free_port()
    async with serve_app(endpoint.app(), port=port):
        yield endpoint, f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def console_stack(tmp_path: Path, flaky: tuple[Flaky, str]) -> AsyncIterator[Stack]:
    """The whole stack with the admin API on, a short retry schedule (a failing delivery is a
    dead letter within a second), a demo subscriber ``ledger`` and the flaky one."""
    env = isolated_env(
        {
            "KARTAHOOK_ADMIN_TOKEN": ADMIN_TOKEN,
            "KARTAHOOK_DELIVERY_RETRY_SCHEDULE_S": "0.2,0.2",
            "KARTAHOOK_DELIVERY_RETRY_REPEAT_S": "0",
            "KARTAHOOK_DELIVERY_JITTER": "0",
            "KARTAHOOK_DELIVERY_BREAKER_FAILURES": "1000",
        }
    )
    built = Stack(
        tmp_path,
        demo_subscribers=[DemoSubscriber("ledger", keep=1000)],
        subscribers=[Subscriber("flaky", flaky[1])],
        token=KARTAPAY_TOKEN,
        redis_appendonly=False,
        base_env=env,
        sandbox_args=("--step-delay", "0.05"),
        grace_s=15.0,
    )
    async with running(built):
        yield built


async def completed_and_dead(stack: Stack) -> str:
    """One sandbox payment driven to completed; once the ledger has its ``payment.completed``
    and the flaky subscriber's deliveries of it are dead letters, its id."""
    async with KartaPayClient(stack.sandbox_url, KARTAPAY_TOKEN, timeout=30.0) as kartapay:
        claim = {"purchase": {"total": {"value": "12.50", "currency": "EUR"}}}
        record = await kartapay.create(claim)
        await kartapay.submit(record.id, "STR")
    ledger = stack.demo_subscribers[0].base_url()
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(timeout=10.0) as http:

        async def settled() -> bool:
            got = await http.get(ledger + "/received", params={"payment_id": record.id})
            types = {entry["type"] for entry in got.json()["received"]}
            dead = await http.get(
                stack.admin_url + "/admin/dead-letters",
                params={"subscriber": "flaky"},
                headers=auth,
            )
            letters: list[dict[str, Any]] = dead.json()["dead_letters"]
            completed_dead = any(d["type"] == "payment.completed" for d in letters)
            return "payment.completed" in types and completed_dead

        await wait_for(settled, timeout_s=90, interval_s=0.2)
    return record.id


@pytest.mark.timeout(400)
async def test_operator_uses_the_console_in_a_real_browser(
    console_stack: Stack, flaky: tuple[Flaky, str]
) -> None:
    """Sign in (a wrong token is refused with a clear message), find a delivered payment by id
    and see its timeline, replay a dead letter and see it delivered, disable a subscriber."""
    executable = chromium_path()
    expect = playwright_api.expect
    expect.set_options(timeout=UI_TIMEOUT_MS)
    payment_id = await completed_and_dead(console_stack)
    endpoint, _ = flaky
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_TIMEOUT_MS)
            problems = watch(page)
            await page.goto(console_stack.admin_url + "/console")

            # Sign in: a wrong token first.
            await page.get_by_label("Admin token").fill("not-the-token")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("#signin-error")).to_contain_text("admin token is wrong")
            await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            await page.get_by_label("Admin token").press("Enter")  # keyboard: submit the form
            await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            await expect(page.locator(".figures")).to_contain_text("Dead letters")

            # Find the delivered payment by its id and read its timeline.
            await page.get_by_role("link", name="Payment", exact=True).click()
            await page.get_by_label("Payment id").fill(payment_id)
            await page.get_by_role("button", name="Show timeline").click()
            await expect(page.get_by_role("heading", name=f"Payment {payment_id}")).to_be_visible()
            await expect(page.locator("#payment-state")).to_contain_text("completed")
            timeline = page.locator("#timeline")
            for kind in ("hint", "fetch", "transition", "delivery"):
                await expect(timeline.locator(f".entry-{kind}").first).to_be_visible()
            await expect(timeline).to_contain_text("completed")
            ledger_rows = page.locator("tr", has_text="ledger")
            await expect(ledger_rows.filter(has_text="payment.completed")).to_contain_text(
                "delivered"
            )
            flaky_completed = page.locator("tr", has_text="flaky").filter(
                has_text="payment.completed"
            )
            await expect(flaky_completed).to_contain_text("dead")
            webhook_id = (await flaky_completed.locator("a").first.inner_text()).strip()

            # The failing subscriber recovers: replay its dead letter from the console.
            endpoint.recover()
            await page.get_by_role("link", name="Dead letters").click()
            replay = page.get_by_role("button", name=f"Replay {webhook_id} to flaky")
            await replay.focus()
            await page.keyboard.press("Enter")
            await expect(page.locator("#flash")).to_contain_text(f"Replayed {webhook_id}")
            await expect(replay).to_have_count(0)

            # ...and see it delivered: the payment's timeline refreshes by itself.
            await page.get_by_role("link", name="Payment", exact=True).click()
            await page.get_by_label("Payment id").fill(payment_id)
            await page.get_by_label("Payment id").press("Enter")
            replayed = page.locator("tr", has_text="flaky").filter(has_text=webhook_id)
            await expect(replayed).to_contain_text("delivered")
            assert webhook_id in endpoint.accepted
            await page.locator("#main").focus()  # no field focused: nothing pauses the refresh
            await page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The payment's events, one of them in full; the flaky subscriber's dead deliveries
            # and one delivery's attempts; the overview's figures.
            await page.get_by_role("link", name="Events").click()
            await page.get_by_label("Payment id").fill(payment_id)
            await page.get_by_role("button", name="Search").click()
            event_link = page.locator("tbody a[href^='#/event/']").first
            await expect(event_link).to_be_visible()
            await event_link.click()
            await expect(page.get_by_role("heading", name="Headers")).to_be_visible()
            await expect(page.locator("main")).to_contain_text(payment_id)
            await page.goto(
                console_stack.admin_url + "/console#/deliveries?subscriber=flaky&state=dead"
            )
            dead_row = page.locator("tbody tr").first
            await expect(dead_row).to_contain_text("dead")
            await dead_row.locator("a[href^='#/delivery/']").click()
            await expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
            await expect(page.locator("tbody")).to_contain_text("500")
            await page.get_by_role("link", name="Overview").click()
            await expect(page.locator(".figures")).to_contain_text("Stuck payments")
            await expect(page.locator("main")).to_contain_text("flaky")

            # Send a test event to a subscriber; rotate another's secret (confirmed).
            await page.get_by_role("link", name="Subscribers").click()
            await page.get_by_role("button", name="Send a test event to ledger").click()
            await expect(page.locator("#flash")).to_contain_text("Test event to ledger: delivered")
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.get_by_role("button", name="Rotate the secret of flaky").click()
            await expect(page.locator("#flash .secret")).to_contain_text("whsec_")

            # Disable a subscriber.
            await page.get_by_role("button", name="Disable ledger").click()
            await expect(page.locator("#state-ledger")).to_contain_text("disabled")
            await expect(page.get_by_role("button", name="Enable ledger")).to_be_visible()
            assert problems == []
        finally:
            await browser.close()
    async with httpx.AsyncClient() as http:
        shown = await http.get(
            console_stack.admin_url + "/admin/subscribers/ledger",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert shown.json()["enabled"] is False


async def test_console_refreshes_itself_pauses_while_editing_and_shows_data_as_text(
    redis_url: str,
) -> None:
    """A subscriber added behind the page's back shows up without a reload; while a form field
    is being typed in, the refresh pauses and the typed text stays; markup in server data is
    shown as text, never turned into elements."""
    executable = chromium_path()
    expect = playwright_api.expect
    expect.set_options(timeout=UI_TIMEOUT_MS)
    client = aioredis.from_url(redis_url)
    store = SubscriberStore(client)
    hostile = '<img src=x id=injected onerror="document.title=1">'
    await store.put(
        StoredSubscriber(
            id="crm", url="http://127.0.0.1:9/h", enabled=False, disabled_reason=hostile
        )
    )
    settings = Settings(redis_url=redis_url, admin_token=ADMIN_TOKEN)
    async with (
        serve_app(create_admin_app(settings)) as admin,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            problems = watch(page)
            await page.goto(admin + "/console#/subscribers")
            await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("#state-crm")).to_contain_text(hostile)
            assert await page.locator("#injected").count() == 0

            await store.put(StoredSubscriber(id="late", url="http://127.0.0.1:9/late"))
            await expect(page.locator("#state-late")).to_contain_text("enabled")

            await page.get_by_label("Id", exact=True).fill("half-typed")
            await expect(page.locator("#refresh-status")).to_contain_text("paused")
            await store.remove("late")
            await page.get_by_role("button", name="Refresh now").click()
            await expect(page.locator("#state-late")).to_have_count(0)
            await expect(page.get_by_label("Id", exact=True)).to_have_value("half-typed")
            assert await page.title() == "kartahook console"

            # Add a subscriber: its generated secret is shown once, and it is listed.
            await page.get_by_label("Id", exact=True).fill("ledger-2")
            await page.get_by_label("URL").fill("http://127.0.0.1:9/ledger")
            await page.get_by_role("button", name="Add subscriber").click()
            await expect(page.locator("#flash .secret")).to_contain_text("whsec_")
            await expect(page.locator("#state-ledger-2")).to_contain_text("enabled")
            added = await store.get("ledger-2")
            assert added is not None and added.url == "http://127.0.0.1:9/ledger"

            # Send a subscriber's deliveries since a time again (it has none yet).
            await page.get_by_label("Subscriber", exact=True).select_option("ledger-2")
            await page.get_by_label("Created since").fill("2000-01-01T00:00:00Z")
            await page.get_by_role("button", name="Send again").click()
            await expect(page.locator("#flash")).to_contain_text("Queued 0 deliveries to ledger-2")
            assert problems == []
        finally:
            await browser.close()
            await client.aclose()
