"""The sandbox speaks every provider: for a payment submitted with a plan code it sends that
provider's webhook at each change of status. A real sandbox sends to a real capture server on
127.0.0.1; every request is checked independently of the sandbox's code (the ``stripe``
package, ``cryptography`` with the certificate fetched over https, Basic decoded by hand, HMAC),
and the payment id is read at DESIGN's default locator of each source. The payload builders also
have unit tests of their own."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import signal
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stripe
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kartahook.commands import sandbox as sandbox_command
from sandbox.config import SandboxConfig
from sandbox.kartapay_api import create_app
from sandbox.payments_store import StatusChange
from sandbox.providers import PLAN_SOURCES, ProviderSettings, build_registry, event_for
from sandbox.providers.holo import Holo
from sandbox.providers.huri import Huri
from sandbox.providers.mvola_km import MVolaKM
from sandbox.providers.mvola_mg import MVolaMG
from sandbox.providers.paypal import PayPal
from sandbox.providers.paypal_certs import generate
from sandbox.providers.stripe import Stripe
from service.domain.signing import generate_secret
from service.store.server import free_port
from tests.support import exit_code, serve_app, start_kartahook, wait_for

TOKEN = "providers-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE = "+261341234567"
CLAIM = {
    "payer": {"email": "payer@example.test", "fullName": "Payer Name", "phone": PHONE},
    "purchase": {"total": {"value": "1000", "currency": "MGA"}},
}
AFTER_SUBMIT = ["submitted", "approved", "captured", "completed"]
SETTINGS = ProviderSettings(
    stripe_secret="whsec_test_stripe_secret_123",
    paypal_webhook_id="WH-TEST-0001",
    basic_user="hook-user",
    basic_password="hook-pass word",
    huri_secret="huri-test-secret",
)
# Per plan code: the provider's status or event type for submitted, approved, captured, completed.
EXPECTED_TYPES = {
    "STR": [
        "payment_intent.processing",
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.succeeded",
    ],
    "PYP": [
        "PAYMENT.CAPTURE.PENDING",
        "PAYMENT.AUTHORIZATION.CREATED",
        "PAYMENT.CAPTURE.COMPLETED",
        "PAYMENT.SALE.COMPLETED",
    ],
    "MVM": ["pending", "pending", "pending", "completed"],
    "MVK": ["PENDING", "PENDING", "PENDING", "SUCCESS"],
    "HOL": ["PENDING", "AUTHORIZED", "CAPTURED", "SUCCESS"],
    "HRM": ["payment.pending", "payment.authorized", "payment.captured", "payment.succeeded"],
}


@dataclass
class Captured:
    method: str
    source: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Capture:
    """A kartahook stand-in: records every request to /v1/webhooks/{source}."""

    requests: list[Captured] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to the first N requests of each provider event
    url: str = ""

    async def handle(self, request: Request) -> Response:
        source = request.path_params["source"]
        body = await request.body()
        headers = dict(request.headers)
        query = dict(request.query_params)
        tries = sum(1 for r in self.requests if (r.body, r.query) == (body, query))
        status = 500 if source != "kartapay" and tries < self.fail_first else 202
        self.requests.append(Captured(request.method, source, headers, query, body, status))
        return Response(status_code=status)

    def of(self, source: str) -> list[Captured]:
        return [r for r in self.requests if r.source == source]


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    cap = Capture()
    route = Route("/v1/webhooks/{source}", cap.handle, methods=["GET", "POST", "PUT"])
    async with serve_app(Starlette(routes=[route])) as url:
        cap.url = url
        yield cap


def config_for(capture: Capture, tmp_path: Path, **overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {
        "token": TOKEN,
        "kartahook_url": capture.url,
        "step_delay_s": 0.05,
        "webhook_backoff_s": 0.05,
        "seed": 7,
        "providers": dataclasses.replace(SETTINGS, paypal_ca_out=str(tmp_path / "ca.pem")),
    }
    values.update(overrides)
    return SandboxConfig(**values)


@contextlib.asynccontextmanager
async def running(config: SandboxConfig) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with (
        serve_app(create_app(config)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        yield client, url


async def pay(client: httpx.AsyncClient, source: str) -> str:
    response = await client.post("/v1/payments", json=CLAIM)
    assert response.status_code == 201
    payment_id = str(response.json()["data"]["id"])
    response = await client.post(f"/v1/payments/{payment_id}/submit", json={"source": source})
    assert response.status_code == 200
    return payment_id


async def arrived(capture: Capture, source: str, count: int, timeout_s: float = 20) -> None:
    async def enough() -> bool:
        return len([r for r in capture.of(source) if r.answered < 300]) >= count

    await wait_for(enough, timeout_s=timeout_s)


def basic(headers: dict[str, str]) -> tuple[str, str]:
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(token).decode().partition(":")
    return user, password


def json_path(body: dict[str, Any], path: str) -> Any:
    """DESIGN's dotted locator, with ``name[key=K]`` for lists of {key, value}."""
    value: Any = body
    for step in path.split("."):
        if "[" in step:
            name, _, selector = step.partition("[")
            key = selector.rstrip("]").removeprefix("key=")
            value = next(item for item in value[name] if item["key"] == key)
        else:
            value = value[step]
    return value


async def verify_paypal(request: Captured, ca_file: Path, webhook_id: str) -> None:
    """Fetch the certificate over https trusting only the generated CA, check chain and CN,
    then check the RSA signature over id|time|webhookId|crc32."""
    headers = request.headers
    assert headers["paypal-auth-algo"] == "SHA256withRSA"
    cert_url = headers["paypal-cert-url"]
    assert cert_url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(cert_url)
    assert response.status_code == 200
    leaf = x509.load_pem_x509_certificate(response.content)
    ca = x509.load_pem_x509_certificate(await asyncio.to_thread(ca_file.read_bytes))
    leaf.verify_directly_issued_by(ca)
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "messageverificationcerts.paypal.com"
    message = "|".join(
        [
            headers["paypal-transmission-id"],
            headers["paypal-transmission-time"],
            webhook_id,
            str(zlib.crc32(request.body) & 0xFFFFFFFF),
        ]
    ).encode()
    public_key = leaf.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        base64.b64decode(headers["paypal-transmission-sig"]),
        message,
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def provider_type(code: str, request: Captured) -> str:
    if code == "HOL":
        return request.query["status"]
    body = orjson.loads(request.body)
    key = {"STR": "type", "PYP": "event_type", "MVM": "transactionStatus", "MVK": "status"}
    return str(body[key.get(code, "type")])


async def check_request(code: str, request: Captured, payment_id: str, tmp_path: Path) -> str:
    """Verify one provider request the provider's way; return its event id."""
    if code == "STR":
        assert request.method == "POST"
        event = stripe.WebhookSignature.verify_header(
            request.body.decode(),
            request.headers["stripe-signature"],
            SETTINGS.stripe_secret,
            tolerance=300,
        )
        assert event is True
        body = orjson.loads(request.body)
        assert json_path(body, "data.object.metadata.paymentId") == payment_id
        assert body["object"] == "event" and body["id"].startswith("evt_")
        assert body["data"]["object"]["id"].startswith("pi_")
        return str(body["id"])
    if code == "PYP":
        assert request.method == "POST"
        await verify_paypal(request, tmp_path / "ca.pem", SETTINGS.paypal_webhook_id)
        body = orjson.loads(request.body)
        assert json_path(body, "resource.custom_id") == payment_id
        assert body["id"].startswith("WH-")
        return str(body["id"])
    if code == "HRM":
        assert request.method == "POST"
        expected = hmac.new(SETTINGS.huri_secret.encode(), request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-huri-signature"], expected)
        body = orjson.loads(request.body)
        assert json_path(body, "data.paymentId") == payment_id
        return str(body["id"])
    assert basic(request.headers) == (SETTINGS.basic_user, SETTINGS.basic_password)
    if code == "HOL":
        assert request.method == "GET" and request.body == b""
        assert request.query["reference"] == payment_id
        assert request.query["amount"] == "1000"
        return request.query["transactionId"]
    body = orjson.loads(request.body)
    if code == "MVM":
        assert request.method == "PUT"
        assert json_path(body, "metadata[key=paymentId].value") == payment_id
        assert {"serverCorrelationId", "transactionReference", "requestDate"} <= set(body)
        assert body["debitParty"] == [{"key": "msisdn", "value": PHONE.lstrip("+")}]
        assert body["creditParty"][0]["key"] == "msisdn"
        return f"{body['serverCorrelationId']}:{body['transactionStatus']}"
    assert code == "MVK" and request.method == "POST"
    assert body["transIDP"] == payment_id
    assert {"operationID", "msisdn", "amount", "status", "transID"} <= set(body)
    return f"{body['transID']}:{body['status']}"


@pytest.mark.parametrize("code", sorted(PLAN_SOURCES))
async def test_each_plan_code_sends_its_providers_webhook_per_status(
    capture: Capture, tmp_path: Path, code: str
) -> None:
    """A payment submitted with a plan code yields, beside KartaPay's own webhooks, one request
    of that provider per status change after submit, each authentic the provider's way and
    naming the payment at DESIGN's default locator; event ids differ between the provider's
    statuses."""
    secret = generate_secret()
    source = PLAN_SOURCES[code]
    config = config_for(
        capture, tmp_path, webhook_url=capture.url + "/v1/webhooks/kartapay", webhook_secret=secret
    )
    async with running(config) as (client, url):
        payment_id = await pay(client, code)
        await arrived(capture, source, len(AFTER_SUBMIT))
        await arrived(capture, "kartapay", len(AFTER_SUBMIT) + 1)
        async with httpx.AsyncClient(base_url=url) as control:
            listed = await control.get("/_sandbox/webhooks", params={"paymentId": payment_id})
        records = listed.json()["data"]
        requests = capture.of(source)
        event_ids = [await check_request(code, r, payment_id, tmp_path) for r in requests]
    assert len(requests) == len(AFTER_SUBMIT)
    assert sorted(provider_type(code, r) for r in requests) == sorted(EXPECTED_TYPES[code])
    # MVola's event id is transaction + status, and MVola only says pending until the end.
    distinct = len(set(EXPECTED_TYPES[code])) if code in ("MVM", "MVK") else len(AFTER_SUBMIT)
    assert len(set(event_ids)) == distinct
    kartapay = [Webhook(secret).verify(r.body, r.headers) for r in capture.of("kartapay")]
    assert sorted(k["data"]["status"] for k in kartapay) == sorted(["init", *AFTER_SUBMIT])
    assert {r["source"] for r in records} == {"kartapay", source}
    assert sorted(r["webhookId"] for r in records if r["source"] == source) == sorted(event_ids)


async def test_drop_status_drops_exactly_those_webhooks(capture: Capture, tmp_path: Path) -> None:
    """drop_statuses (and its runtime change through POST /_sandbox/faults) sends no webhook,
    KartaPay's or the provider's, for exactly the changes to those statuses."""
    secret = generate_secret()
    config = config_for(
        capture,
        tmp_path,
        webhook_url=capture.url + "/v1/webhooks/kartapay",
        webhook_secret=secret,
        drop_statuses=("approved", "captured"),
    )
    async with running(config) as (client, url):
        first = await pay(client, "HRM")
        await arrived(capture, "huri", 2)
        await arrived(capture, "kartapay", 3)
        async with httpx.AsyncClient(base_url=url) as control:
            bad = await control.post("/_sandbox/faults", json={"drop_statuses": ["nope"]})
            assert bad.status_code == 400
            response = await control.post("/_sandbox/faults", json={"drop_statuses": ["submitted"]})
            assert response.status_code == 200
            assert response.json()["drop_statuses"] == ["submitted"]
        second = await pay(client, "HRM")
        await arrived(capture, "huri", 5)
        await arrived(capture, "kartapay", 7)
    by_payment: dict[str, list[str]] = {}
    for r in capture.of("huri"):
        data = orjson.loads(r.body)["data"]
        by_payment.setdefault(data["paymentId"], []).append(data["status"])
    kartapay: dict[str, list[str]] = {}
    for r in capture.of("kartapay"):
        data = Webhook(secret).verify(r.body, r.headers)["data"]
        kartapay.setdefault(data["id"], []).append(data["status"])
    assert sorted(by_payment[first]) == ["pending", "succeeded"]
    assert sorted(kartapay[first]) == ["completed", "init", "submitted"]
    assert sorted(by_payment[second]) == ["authorized", "captured", "succeeded"]
    assert sorted(kartapay[second]) == ["approved", "captured", "completed", "init"]


async def test_provider_mode_sends_no_kartapay_webhook(capture: Capture, tmp_path: Path) -> None:
    """webhooks='provider' sends the provider's webhooks only, even with a KartaPay URL and
    secret configured; GET /_sandbox/webhooks lists them with their source."""
    config = config_for(
        capture,
        tmp_path,
        webhooks="provider",
        webhook_url=capture.url + "/v1/webhooks/kartapay",
        webhook_secret=generate_secret(),
    )
    async with running(config) as (client, url):
        payment_id = await pay(client, "MVK")
        await arrived(capture, "mvola-km", len(AFTER_SUBMIT))
        response = await client.post("/v1/payments", json=CLAIM)  # init only: nothing to send
        assert response.status_code == 201
        async with httpx.AsyncClient(base_url=url) as control:
            records = (await control.get("/_sandbox/webhooks")).json()["data"]
            providers = (await control.get("/_sandbox/providers")).json()
    assert capture.of("kartapay") == []
    assert [r.source for r in capture.requests] == ["mvola-km"] * len(AFTER_SUBMIT)
    assert len(records) == len(AFTER_SUBMIT)
    assert all(r["source"] == "mvola-km" and r["paymentId"] == payment_id for r in records)
    assert providers["kartapayWebhooks"] is False and providers["providerWebhooks"] is True
    assert providers["paypal"]["caFile"] == str(tmp_path / "ca.pem")
    assert SETTINGS.huri_secret not in orjson.dumps(providers).decode()


async def test_duplicates_and_retries_apply_to_provider_webhooks(
    capture: Capture, tmp_path: Path
) -> None:
    """duplicate_webhooks sends each provider event twice with the same id and body, and a
    receiver's 500 is retried with the same event, signed again."""
    capture.fail_first = 1
    config = config_for(capture, tmp_path, webhooks="provider", duplicate_webhooks=True)
    async with running(config) as (client, _):
        await pay(client, "HRM")
        await arrived(capture, "huri", 2 * len(AFTER_SUBMIT))
    bodies: dict[str, list[tuple[int, bytes]]] = {}
    for r in capture.of("huri"):
        expected = hmac.new(SETTINGS.huri_secret.encode(), r.body, hashlib.sha256).hexdigest()
        assert r.headers["x-huri-signature"] == expected
        bodies.setdefault(orjson.loads(r.body)["id"], []).append((r.answered, r.body))
    assert len(bodies) == len(AFTER_SUBMIT)
    for sends in bodies.values():
        assert [status for status, _ in sends] == [500, 202, 202]
        assert len({body for _, body in sends}) == 1


async def test_out_of_order_applies_to_provider_webhooks(capture: Capture, tmp_path: Path) -> None:
    """out_of_order_webhooks delivers all provider events of a payment, not in lifecycle order."""
    config = config_for(
        capture,
        tmp_path,
        webhooks="provider",
        step_delay_s=0.01,
        out_of_order_webhooks=True,
        out_of_order_window_s=1.0,
    )
    async with running(config) as (client, _):
        await pay(client, "HOL")
        await arrived(capture, "holo", len(AFTER_SUBMIT))
    order = [r.query["status"] for r in capture.of("holo")]
    assert sorted(order) == sorted(EXPECTED_TYPES["HOL"])
    assert order != EXPECTED_TYPES["HOL"]


async def test_no_provider_webhooks_without_a_kartahook_url(capture: Capture) -> None:
    """Without kartahook_url only KartaPay's webhooks are sent, even to a URL under
    /v1/webhooks/ (callers that give only webhook_url see no change), no PayPal certificate is
    made, and 'provider' mode is refused."""
    secret = generate_secret()
    config = SandboxConfig(
        token=TOKEN,
        webhook_url=capture.url + "/v1/webhooks/kartapay",
        webhook_secret=secret,
        step_delay_s=0.05,
    )
    async with running(config) as (client, url):
        await pay(client, "STR")
        await arrived(capture, "kartapay", len(AFTER_SUBMIT) + 1)
        async with httpx.AsyncClient(base_url=url) as control:
            providers = (await control.get("/_sandbox/providers")).json()
    assert {r.source for r in capture.requests} == {"kartapay"}
    assert providers["providerWebhooks"] is False and providers["paypal"] is None
    with pytest.raises(ValueError, match="kartahook_url"):
        SandboxConfig(webhooks="provider")


# --- unit tests of the payload builders ---------------------------------------------------------


def change(status: str = "captured", payment_id: str = "pay-1") -> StatusChange:
    payment = {
        "id": payment_id,
        "status": status,
        "payer": {"email": "p@example.test", "phone": PHONE},
        "purchase": {"total": {"value": "12.50", "currency": "EUR"}},
        "plan": {"source": "STR"},
        "billing": {"providerId": "str_00112233aabbccdd"},
        "submittedAt": "2025-01-31T12:00:00.000Z",
    }
    return StatusChange(payment_id, status, "2025-01-31T12:00:05.123Z", payment)


def test_stripe_builder_makes_a_payment_intent_event_stripe_accepts() -> None:
    """Stripe: event object with a payment_intent in minor units naming the payment in its
    metadata; the signature header passes stripe.WebhookSignature.verify_header."""
    provider = Stripe(SETTINGS.stripe_secret)
    event = provider.build(change("captured"), "ab" * 12)
    body = orjson.loads(event.body)
    assert (event.method, event.path, event.event_id) == ("POST", "/v1/webhooks/stripe", body["id"])
    assert body["id"] == "evt_" + "ab" * 12 and body["type"] == "payment_intent.succeeded"
    assert body["created"] == 1738324805
    intent = body["data"]["object"]
    assert intent["object"] == "payment_intent" and intent["id"] == "pi_00112233aabbccdd"
    assert (intent["amount"], intent["currency"], intent["status"]) == (1250, "eur", "succeeded")
    assert intent["metadata"] == {"paymentId": "pay-1"}
    header = provider.sign(event, time.time())["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(
        event.body.decode(), header, SETTINGS.stripe_secret, tolerance=300
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(event.body.decode(), header, "whsec_other", 300)


def test_paypal_builder_signs_id_time_webhook_id_and_crc() -> None:
    """PayPal: event with resource.custom_id, signed with the leaf key over
    transmissionId|transmissionTime|webhookId|crc32(body); the leaf chains to the CA, also
    under cryptography's server verification policy for its subject name."""
    certificates = generate("messageverificationcerts.paypal.com")
    cert_url = "https://127.0.0.1:1/cert"
    provider = PayPal(SETTINGS.paypal_webhook_id, certificates.signing_key, cert_url)
    event = provider.build(change("completed"), "cd" * 12)
    body = orjson.loads(event.body)
    assert body["event_type"] == "PAYMENT.SALE.COMPLETED" and body["id"] == "WH-" + "CD" * 12
    assert body["resource"]["custom_id"] == "pay-1"
    assert body["resource"]["amount"] == {"currency_code": "EUR", "value": "12.50"}
    headers = provider.sign(event, 1738324805.9)
    assert headers["PAYPAL-TRANSMISSION-TIME"] == "2025-01-31T12:00:05Z"
    assert headers["PAYPAL-CERT-URL"] == cert_url
    leaf = x509.load_pem_x509_certificate(certificates.leaf_pem)
    ca = x509.load_pem_x509_certificate(certificates.ca_pem)
    leaf.verify_directly_issued_by(ca)
    # The chain also passes cryptography's web-PKI server policy for the subject name.
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("messageverificationcerts.paypal.com"))
    )
    assert verifier.verify(leaf, [])[-1] == ca
    message = (
        f"{headers['PAYPAL-TRANSMISSION-ID']}|{headers['PAYPAL-TRANSMISSION-TIME']}|"
        f"{SETTINGS.paypal_webhook_id}|{zlib.crc32(event.body)}"
    ).encode()
    public_key = leaf.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        base64.b64decode(headers["PAYPAL-TRANSMISSION-SIG"]),
        message,
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_mvola_mg_builder_puts_the_callback_with_metadata_and_basic() -> None:
    """MVola MG: PUT with transactionStatus, serverCorrelationId, the payment id in the
    metadata list, the payer's MSISDN, and Basic credentials; event id correlation:status."""
    provider = MVolaMG("u", "p")
    pending = provider.build(change("approved"), "00")
    done = provider.build(change("completed"), "11")
    body = orjson.loads(done.body)
    assert done.method == "PUT" and done.path == "/v1/webhooks/mvola-mg"
    assert body["transactionStatus"] == "completed"
    assert orjson.loads(pending.body)["transactionStatus"] == "pending"
    assert orjson.loads(pending.body)["serverCorrelationId"] == body["serverCorrelationId"]
    assert {"key": "paymentId", "value": "pay-1"} in body["metadata"]
    assert body["debitParty"] == [{"key": "msisdn", "value": "261341234567"}]
    assert done.event_id == f"{body['serverCorrelationId']}:completed" != pending.event_id
    assert ("Authorization", "Basic " + base64.b64encode(b"u:p").decode()) in done.headers


def test_mvola_km_builder_posts_the_flat_body() -> None:
    """MVola KM: POST with operationID, msisdn, amount, status, transID and transIDP = the
    payment id; Basic credentials; event id transID:status."""
    event = MVolaKM("u", "p").build(change("failed"), "00")
    body = orjson.loads(event.body)
    assert event.method == "POST" and event.path == "/v1/webhooks/mvola-km"
    assert body["transIDP"] == "pay-1" and body["status"] == "FAILED"
    assert (body["msisdn"], body["amount"]) == ("261341234567", "12.50")
    assert body["transID"] == "MP00112233AABB" and body["operationID"]
    assert event.event_id == "MP00112233AABB:FAILED"
    assert ("Authorization", "Basic " + base64.b64encode(b"u:p").decode()) in event.headers


def test_holo_builder_puts_everything_in_the_query() -> None:
    """Holo: GET with transactionId (one per notification), reference = payment id, status and
    amount in the query; no body; Basic credentials."""
    provider = Holo("u", "p")
    event = provider.build(change("captured"), "ee" * 12)
    other = provider.build(change("completed"), "ff" * 12)
    query = dict(event.query)
    assert event.method == "GET" and event.body == b"" and event.path == "/v1/webhooks/holo"
    assert (query["reference"], query["status"], query["amount"]) == ("pay-1", "CAPTURED", "12.50")
    assert event.event_id == query["transactionId"] != other.event_id
    assert ("Authorization", "Basic " + base64.b64encode(b"u:p").decode()) in event.headers


def test_huri_builder_signs_the_body_as_configured() -> None:
    """Huri: {id, type, data: {paymentId, status, amount}} with a hex HMAC-SHA256 of the body by
    default; with a prefix, base64, sha512 and a timestamp header, "t.body" is signed."""
    event = Huri("s3cret").build(change("completed"), "12" * 12)
    body = orjson.loads(event.body)
    assert body["id"] == event.event_id == "hur_" + "12" * 12
    assert body["data"] == {
        "paymentId": "pay-1",
        "status": "succeeded",
        "amount": "12.50",
        "currency": "EUR",
    }
    plain = Huri("s3cret").sign(event, 1000.0)
    assert plain == {"X-Huri-Signature": hmac.new(b"s3cret", event.body, "sha256").hexdigest()}
    custom = Huri(
        "s3cret",
        header="X-Sig",
        algorithm="sha512",
        encoding="base64",
        prefix="v1=",
        timestamp_header="X-Ts",
    ).sign(event, 1000.0)
    digest = hmac.new(b"s3cret", b"1000." + event.body, "sha512").digest()
    assert custom == {"X-Ts": "1000", "X-Sig": "v1=" + base64.b64encode(digest).decode()}


def test_registry_sends_only_for_submitted_payments_with_a_known_plan_code() -> None:
    """No provider webhook for init, for a payment never submitted, or an unknown plan code;
    otherwise the plan code picks the provider."""
    registry = build_registry(SETTINGS, None)
    assert set(registry) == {"STR", "MVM", "MVK", "HOL", "HRM"}  # PayPal needs its certificate
    assert event_for(registry, change("init"), "00") is None
    unsubmitted = change("canceled")
    del unsubmitted.payment["submittedAt"]
    assert event_for(registry, unsubmitted, "00") is None
    unknown = change("captured")
    unknown.payment["plan"]["source"] = "XXX"
    assert event_for(registry, unknown, "00") is None
    found = event_for(registry, change("canceled"), "00")
    assert found is not None and found[1].type == "payment_intent.canceled"


def test_cli_flags_and_environment_set_provider_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider secrets come from flags or KARTAHOOK_SANDBOX_* variables, --drop-status repeats,
    and a bad value is refused by argparse."""
    monkeypatch.setenv("KARTAHOOK_SANDBOX_STRIPE_SECRET", "whsec_from_env")
    monkeypatch.setenv("KARTAHOOK_SANDBOX_KARTAHOOK_URL", "http://127.0.0.1:9")
    parser = argparse.ArgumentParser()
    sandbox_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--huri-secret",
            "h",
            "--drop-status",
            "approved",
            "--drop-status",
            "failed",
            "--webhooks",
            "provider",
            "--paypal-cert-port",
            "8443",
        ]
    )
    settings = sandbox_command.provider_settings(args)
    assert settings.stripe_secret == "whsec_from_env" and settings.huri_secret == "h"
    assert settings.paypal_cert_port == 8443 and settings.paypal_ca_out is None
    assert args.drop_status == ["approved", "failed"] and args.kartahook_url == "http://127.0.0.1:9"
    with pytest.raises(SystemExit):
        parser.parse_args(["--drop-status", "lost"])


async def test_sandbox_command_sends_provider_webhooks_without_leaking(
    capture: Capture, tmp_path: Path
) -> None:
    """`kartahook sandbox --webhooks provider` as a real process sends signed provider webhooks
    with the credentials given by flags and environment, writes the PayPal CA where told, honours
    --drop-status, and logs no secret, credential, signature or payer data."""
    ca_file = tmp_path / "paypal-ca.pem"
    stripe_secret = "whsec_cli_stripe_secret_value"
    password = "cli-basic-password-value"
    env = {
        "KARTAHOOK_KARTAPAY_TOKEN": TOKEN,
        "KARTAHOOK_LOG_FORMAT": "json",
        "KARTAHOOK_SANDBOX_BASIC_PASSWORD": password,
    }
    port = free_port()
    log_path = tmp_path / "sandbox.log"
    process = start_kartahook(
        [
            "sandbox",
            "--port",
            str(port),
            "--step-delay",
            "0.05",
            "--webhooks",
            "provider",
            "--kartahook-url",
            capture.url,
            "--stripe-secret",
            stripe_secret,
            "--paypal-ca-out",
            str(ca_file),
            "--drop-status",
            "approved",
        ],
        env,
        log_path,
    )
    signatures: list[str] = []
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=5
        ) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout_s=30, interval_s=0.1)
            stripe_payment = await pay(client, "STR")
            mvola_payment = await pay(client, "MVM")
            await arrived(capture, "stripe", 3)
            await arrived(capture, "mvola-mg", 3)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await exit_code(process, 30)
    assert code in (0, -signal.SIGTERM)
    for request in capture.of("stripe"):
        assert stripe.WebhookSignature.verify_header(
            request.body.decode(), request.headers["stripe-signature"], stripe_secret, 300
        )
        assert json_path(orjson.loads(request.body), "data.object.metadata.paymentId") == (
            stripe_payment
        )
        signatures.append(request.headers["stripe-signature"].split("v1=")[1])
    assert sorted(orjson.loads(r.body)["type"] for r in capture.of("stripe")) == [
        "payment_intent.processing",
        "payment_intent.succeeded",
        "payment_intent.succeeded",
    ]
    for request in capture.of("mvola-mg"):
        assert basic(request.headers) == (ProviderSettings().basic_user, password)
        signatures.append(request.headers["authorization"].split(" ")[1])
        assert json_path(orjson.loads(request.body), "metadata[key=paymentId].value") == (
            mvola_payment
        )
    assert capture.of("kartapay") == []
    assert b"BEGIN CERTIFICATE" in ca_file.read_bytes()
    logs = log_path.read_text()
    assert "webhook sent" in logs and "paypal certificate served" in logs
    for leak in (stripe_secret, password, PHONE.lstrip("+"), "Payer Name", *signatures):
        assert leak not in logs
