"""The demo subscriber over real sockets, fed deliveries signed with ``standardwebhooks``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from sandbox.demo_subscriber import create_app
from service.domain.signing import generate_secret
from tests.support import serve_app

SECRET = generate_secret()


def delivery(
    payment_id: str,
    status: str,
    webhook_id: str | None = None,
    payment_status: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A delivery body as fan-out sends it, with headers signed by ``standardwebhooks``."""
    msg_id = webhook_id or f"tr_{payment_id}_{status}"
    body = orjson.dumps(
        {
            "id": msg_id,
            "type": f"payment.{status}",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "id": payment_id,
                "status": payment_status or status,
                "payer": {"fullName": "Ada Lovelace", "email": "ada@example.com"},
            },
        }
    )
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, now, body.decode()),
        "idempotency-key": msg_id,
    }
    return body, headers


async def post(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/hooks/payments", content=body, headers=headers)


async def received(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/received", params=params)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def test_valid_delivery_is_accepted_and_listed() -> None:
    """A correctly signed delivery gets 200 and appears in /received with its ids and status."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await post(client, *delivery("pay_1", "captured"))
        assert response.status_code == 200
        assert response.json() == {"received": "tr_pay_1_captured", "duplicate": False}
        listing = await received(client)
    assert listing["count"] == 1
    assert listing["duplicates"] == 0
    [entry] = listing["received"]
    assert entry["webhook_id"] == "tr_pay_1_captured"
    assert entry["type"] == "payment.captured"
    assert entry["payment_id"] == "pay_1"
    assert entry["status"] == "captured"
    assert entry["path"] == "/hooks/payments"
    assert datetime.fromisoformat(entry["received_at"]).tzinfo is not None


async def test_status_is_the_events_not_the_payments_current_one() -> None:
    """A payment.submitted event whose fetched payment is already completed lists submitted."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = delivery("pay_1", "submitted", payment_status="completed")
        assert (await post(client, body, headers)).status_code == 200
        [entry] = (await received(client))["received"]
    assert (entry["type"], entry["status"]) == ("payment.submitted", "submitted")


async def test_tampered_body_and_wrong_secret_are_rejected() -> None:
    """A changed body or a signature made with another secret gets 401 and is not listed."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = delivery("pay_1", "captured")
        tampered = body.replace(b"captured", b"completed")
        assert (await post(client, tampered, headers)).status_code == 401

        other = Webhook(generate_secret())
        now = datetime.now(UTC)
        forged = {
            **headers,
            "webhook-signature": other.sign("tr_pay_1_captured", now, body.decode()),
        }
        forged["webhook-timestamp"] = str(int(now.timestamp()))
        assert (await post(client, body, forged)).status_code == 401

        listing = await received(client)
    assert listing["count"] == 0
    assert listing["received"] == []


async def test_stale_timestamp_and_missing_headers_are_rejected() -> None:
    """A signature older than the 5-minute tolerance gets 401; missing headers get 400."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = delivery("pay_1", "captured")
        old = datetime.now(UTC) - timedelta(minutes=10)
        stale = {
            **headers,
            "webhook-timestamp": str(int(old.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("tr_pay_1_captured", old, body.decode()),
        }
        assert (await post(client, body, stale)).status_code == 401
        no_signature = {k: v for k, v in headers.items() if k != "webhook-signature"}
        assert (await post(client, body, no_signature)).status_code == 400
        assert (await received(client))["count"] == 0


async def test_duplicates_are_answered_2xx_listed_once_and_counted() -> None:
    """Three copies of one webhook-id: all get 200, one entry is listed, two duplicates counted."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        answers = [(await post(client, *delivery("pay_1", "approved"))) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.json()["duplicate"] for a in answers] == [False, True, True]
        listing = await received(client)
    assert listing["count"] == 1
    assert listing["duplicates"] == 2
    [entry] = listing["received"]
    assert entry["duplicates"] == 2


async def test_order_of_arrival_is_kept_and_since_filters() -> None:
    """Entries are listed in arrival order with rising seq; ?since and ?payment_id filter them."""
    sent = [("pay_1", "submitted"), ("pay_2", "submitted"), ("pay_1", "approved")]
    sent += [("pay_1", "captured"), ("pay_2", "failed")]
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for payment_id, status in sent:
            assert (await post(client, *delivery(payment_id, status))).status_code == 200
        listing = await received(client)
        later = await received(client, since=3)
        only_2 = await received(client, payment_id="pay_2")
    assert [(e["payment_id"], e["status"]) for e in listing["received"]] == sent
    assert [e["seq"] for e in listing["received"]] == [1, 2, 3, 4, 5]
    assert [(e["payment_id"], e["status"]) for e in later["received"]] == sent[3:]
    assert [e["status"] for e in only_2["received"]] == ["submitted", "failed"]


async def test_only_the_last_n_are_kept_but_old_ids_still_deduplicate() -> None:
    """With keep=3, five deliveries list the last three; a late copy of the first is a duplicate."""
    async with (
        serve_app(create_app(SECRET, keep=3)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for n in range(5):
            assert (await post(client, *delivery(f"pay_{n}", "completed"))).status_code == 200
        late_copy = await post(client, *delivery("pay_0", "completed"))
        assert late_copy.json()["duplicate"] is True
        listing = await received(client)
    assert listing["count"] == 5
    assert listing["kept"] == 3
    assert listing["duplicates"] == 1
    assert [e["payment_id"] for e in listing["received"]] == ["pay_2", "pay_3", "pay_4"]


async def test_log_lines_carry_ids_but_never_signature_or_payer() -> None:
    """Each delivery is logged with its ids and status; no signature or payer data is logged."""
    body, headers = delivery("pay_9", "completed")
    with capture_logs() as logs:
        async with (
            serve_app(create_app(SECRET)) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            assert (await post(client, body, headers)).status_code == 200
            tampered = body.replace(b"completed", b"canceled")
            assert (await post(client, tampered, headers)).status_code == 401
    events = [line for line in logs if line["event"].startswith("delivery_")]
    assert [line["event"] for line in events] == ["delivery_received", "delivery_rejected"]
    assert events[0]["webhook_id"] == "tr_pay_9_completed"
    assert events[0]["payment_id"] == "pay_9"
    assert events[0]["status"] == "completed"
    text = repr(logs)
    assert headers["webhook-signature"].split(",", 1)[1] not in text
    assert "Ada Lovelace" not in text
    assert "ada@example.com" not in text


def test_keep_must_be_positive() -> None:
    """A list that keeps nothing is refused when the app is made."""
    with pytest.raises(ValueError, match="keep"):
        create_app(SECRET, keep=0)


async def test_rejections_are_counted_by_reason_in_the_listing() -> None:
    """Bad signatures, missing headers and non-object bodies are counted by reason in
    ``rejected``; accepted deliveries are not."""
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await received(client))["rejected"] == {}
        body, headers = delivery("pay_1", "captured")
        assert (
            await post(client, body.replace(b"captured", b"completed"), headers)
        ).status_code == 401
        assert (
            await post(client, body.replace(b"captured", b"failed"), headers)
        ).status_code == 401
        no_id = {k: v for k, v in headers.items() if k != "webhook-id"}
        assert (await post(client, body, no_id)).status_code == 400
        array = b"[1]"
        now = datetime.now(UTC)
        signed_array = {
            **headers,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SECRET).sign(headers["webhook-id"], now, "[1]"),
        }
        assert (await post(client, array, signed_array)).status_code == 400
        assert (await post(client, body, headers)).status_code == 200
        listing = await received(client)
    assert listing["rejected"] == {"bad_signature": 2, "missing_headers": 1, "not_json": 1}
    assert listing["count"] == 1


async def test_keep_raw_lists_the_first_copys_body_and_signature_headers() -> None:
    """With keep_raw each entry carries the first copy's exact body and webhook-* headers,
    which verify with standardwebhooks; without it no entry has ``raw``."""
    body, headers = delivery("pay_1", "captured")
    async with (
        serve_app(create_app(SECRET, keep_raw=True)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await post(client, body, headers)).status_code == 200
        assert (await post(client, body, headers)).status_code == 200  # a duplicate
        listing = await received(client)
    [entry] = listing["received"]
    raw = entry["raw"]
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    assert raw["headers"] == {name: headers[name] for name in names}
    assert raw["body"] == body.decode()
    Webhook(SECRET).verify(raw["body"], raw["headers"])
    async with (
        serve_app(create_app(SECRET)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await post(client, body, headers)).status_code == 200
        [plain] = (await received(client))["received"]
    assert "raw" not in plain


async def test_fail_ratio_one_answers_500_and_lists_nothing() -> None:
    """With fail_ratio 1 every verified delivery is answered 500 (a failing subscriber for
    `run --failing-subscriber`), counted as failed_on_purpose and not listed; a bad signature
    is still 401; a ratio outside 0..1 is refused."""
    async with (
        serve_app(create_app(SECRET, fail_ratio=1.0)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        body, headers = delivery("pay_1", "completed")
        assert (await post(client, body, headers)).status_code == 500
        assert (await post(client, body, headers)).status_code == 500  # its retry too
        forged = {**headers, "webhook-signature": "v1,AAAA"}
        assert (await post(client, body, forged)).status_code == 401
        listing = await received(client)
    assert listing["count"] == 0 and listing["received"] == []
    assert listing["rejected"] == {"failed_on_purpose": 2, "bad_signature": 1}
    with pytest.raises(ValueError, match="fail_ratio"):
        create_app(SECRET, fail_ratio=1.5)
