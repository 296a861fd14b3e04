"""PayPal: RSA signatures checked with a certificate fetched over https from a real server on
127.0.0.1, whose CA and certificates are made in the test."""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.api.ingest.sources import SourceConfigError, build_sources, paypal
from service.api.ingest.sources.base import NotAuthentic
from service.store.server import free_port
from tests.api.ingest.sources.pki import Issued, issue, make_ca
from tests.api.ingest.sources.support import request_lines, served
from tests.support import serve_app

CN = "messageverificationcerts.paypal.test"
WEBHOOK_ID = "WH-4LF48398NM123456A"
PATH = "/v1/webhooks/paypal"


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    tls_cert: Path
    tls_key: Path
    certificates: dict[str, Issued]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("paypal-pki")
    ca = make_ca("kartahook test root")
    stranger = make_ca("untrusted root")
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.pem)
    tls_cert, tls_key = issue(ca, "localhost", ips=("127.0.0.1",)).write(directory, "tls")
    return Pki(
        ca_file,
        tls_cert,
        tls_key,
        {
            "good": issue(ca, CN),
            "second": issue(ca, CN),
            "wrong-cn": issue(ca, "other.paypal.test"),
            "expired": issue(ca, CN, expired=True),
            "untrusted": issue(stranger, CN),
            "slow": issue(ca, CN),
        },
    )


@dataclass
class CertServers:
    """The same certificate app behind https (the real one) and plain http."""

    https_port: int
    http_port: int
    fetches: Counter[str] = field(default_factory=Counter)

    def url(self, name: str, *, host: str = "localhost", scheme: str = "https") -> str:
        port = self.https_port if scheme == "https" else self.http_port
        return f"{scheme}://{host}:{port}/certs/{name}"


@pytest.fixture
async def cert_servers(pki: Pki) -> AsyncIterator[CertServers]:
    servers = CertServers(free_port(), free_port())

    async def certificate(request: Request) -> Response:
        name = request.path_params["name"]
        servers.fetches[name] += 1
        if name == "moved":
            return RedirectResponse(servers.url("good"), status_code=302)
        if name == "slow":
            await asyncio.sleep(2)
        issued = pki.certificates.get(name)
        if issued is None:
            return Response(status_code=404)
        return Response(issued.pem, media_type="application/x-pem-file")

    app = Starlette(routes=[Route("/certs/{name}", certificate)])
    async with (
        serve_app(
            app,
            port=servers.https_port,
            ssl_certfile=str(pki.tls_cert),
            ssl_keyfile=str(pki.tls_key),
        ),
        serve_app(app, port=servers.http_port),
    ):
        yield servers


def paypal_config(pki: Pki, **options: Any) -> dict[str, dict[str, Any]]:
    return {
        "paypal": {
            "webhook_id": WEBHOOK_ID,
            "cert_hosts": ["localhost"],
            "cert_subject_cn": CN,
            "cert_ca_file": str(pki.ca_file),
            **options,
        }
    }


@pytest.fixture
async def client(
    redis_url: str, pki: Pki, cert_servers: CertServers
) -> AsyncIterator[httpx.AsyncClient]:
    async with served(redis_url, paypal_config(pki)) as http:
        yield http


def event(payment_id: str = "pay_p1") -> bytes:
    return orjson.dumps(
        {
            "id": f"WH-{uuid4().hex}",
            "event_type": "PAYMENT.CAPTURE.COMPLETED",
            "resource": {"id": "8MC585209K746392H", "custom_id": payment_id},
        }
    )


def signed(
    issued: Issued,
    cert_url: str,
    body: bytes,
    webhook_id: str = WEBHOOK_ID,
    *,
    transmission_id: str | None = None,
    encoding: str = "utf-8",
) -> dict[str, str]:
    """PayPal's headers for ``body``, signed with ``issued``'s key (the message encoded with
    ``encoding``)."""
    transmission_id = transmission_id or str(uuid4())
    transmission_time = "2026-12-01T10:00:00Z"
    message = f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(body)}"
    signature = issued.key.sign(message.encode(encoding), padding.PKCS1v15(), hashes.SHA256())
    return {
        "content-type": "application/json",
        "paypal-transmission-id": transmission_id,
        "paypal-transmission-time": transmission_time,
        "paypal-transmission-sig": base64.b64encode(signature).decode(),
        "paypal-cert-url": cert_url,
        "paypal-auth-algo": "SHA256withRSA",
    }


async def test_valid_then_duplicate_and_one_fetch(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """Right signature: 202, the same event again 200, and the certificate is fetched once for
    many webhooks, concurrent ones included."""
    url = cert_servers.url("good")
    good = pki.certificates["good"]
    body = event()
    first = await client.post(PATH, content=body, headers=signed(good, url, body))
    assert first.status_code == 202, first.text
    assert first.json()["event_id"] == orjson.loads(body)["id"]
    again = await client.post(PATH, content=body, headers=signed(good, url, body))
    assert again.status_code == 200
    bodies = [event() for _ in range(8)]
    answers = await asyncio.gather(
        *(client.post(PATH, content=b, headers=signed(good, url, b)) for b in bodies)
    )
    assert [a.status_code for a in answers] == [202] * 8
    assert cert_servers.fetches["good"] == 1


async def test_concurrent_first_requests_share_one_fetch(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """Webhooks arriving together before the certificate is cached cause one fetch."""
    url = cert_servers.url("second")
    bodies = [event() for _ in range(6)]
    answers = await asyncio.gather(
        *(
            client.post(PATH, content=b, headers=signed(pki.certificates["second"], url, b))
            for b in bodies
        )
    )
    assert [a.status_code for a in answers] == [202] * 6
    assert cert_servers.fetches["second"] == 1


async def test_second_certificate_of_a_rotation(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """PayPal rotates certificates: a webhook naming another valid certificate is accepted."""
    for name in ("good", "second"):
        body = event()
        headers = signed(pki.certificates[name], cert_servers.url(name), body)
        assert (await client.post(PATH, content=body, headers=headers)).status_code == 202


async def test_tampered_body_or_signature(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """A changed body, or a signature by another key, is refused: 401."""
    url = cert_servers.url("good")
    body = event()
    headers = signed(pki.certificates["good"], url, body)
    tampered = body.replace(b"pay_p1", b"pay_p2")
    assert (await client.post(PATH, content=tampered, headers=headers)).status_code == 401
    forged = signed(pki.certificates["second"], url, body)  # right format, wrong key
    assert (await client.post(PATH, content=body, headers=forged)).status_code == 401


async def test_missing_signature_or_wrong_webhook_id(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """No signature header, or a signature for another webhook id: 401."""
    url = cert_servers.url("good")
    body = event()
    headers = signed(pki.certificates["good"], url, body)
    del headers["paypal-transmission-sig"]
    assert (await client.post(PATH, content=body, headers=headers)).status_code == 401
    other = signed(pki.certificates["good"], url, body, webhook_id="WH-SOMEONE-ELSE")
    assert (await client.post(PATH, content=body, headers=other)).status_code == 401


@pytest.mark.parametrize("name", ["wrong-cn", "expired", "untrusted"])
async def test_untrustworthy_certificates(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers, name: str
) -> None:
    """A certificate with another CN, expired, or not chained to a trusted root: 401, even
    though the request is signed with that certificate's own key."""
    body = event()
    with structlog.testing.capture_logs() as logs:
        response = await client.post(
            PATH, content=body, headers=signed(pki.certificates[name], cert_servers.url(name), body)
        )
    assert response.status_code == 401
    assert response.json() == {"error": "unauthenticated"}
    assert cert_servers.fetches[name] == 1
    [line] = request_lines(logs)
    assert (line["source"], line["outcome"]) == ("paypal", "unauthenticated")


@pytest.mark.parametrize(
    "where",
    [
        {"scheme": "http"},  # plain http on an allowed host
        {"host": "127.0.0.1"},  # https, but not a host in cert_hosts
    ],
    ids=["http", "host-outside-cert-hosts"],
)
async def test_certificate_urls_never_fetched(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers, where: dict[str, str]
) -> None:
    """A certificate URL that is not https on an allowed host is refused (401) and never
    fetched, though a server there would serve the right certificate."""
    url = cert_servers.url("good", **where)
    body = event()
    response = await client.post(
        PATH, content=body, headers=signed(pki.certificates["good"], url, body)
    )
    assert response.status_code == 401
    assert cert_servers.fetches["good"] == 0


async def test_certificate_server_down(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """A certificate that cannot be fetched (nothing listening, 404, a redirect, which is not
    followed) answers 503 with Retry-After: PayPal retries; never 2xx, never 401."""
    urls = [
        f"https://localhost:{free_port()}/certs/good",
        cert_servers.url("missing"),
        cert_servers.url("moved"),
    ]
    for url in urls:
        body = event()
        with structlog.testing.capture_logs() as logs:
            response = await client.post(
                PATH, content=body, headers=signed(pki.certificates["good"], url, body)
            )
        assert response.status_code == 503, url
        assert response.headers["retry-after"] == "5"
        [line] = request_lines(logs)
        assert (line["source"], line["outcome"]) == ("paypal", "verification_unavailable")
    assert cert_servers.fetches["moved"] == 1
    assert cert_servers.fetches["good"] == 0  # the redirect was not followed


async def test_certificate_fetch_times_out(
    redis_url: str, pki: Pki, cert_servers: CertServers
) -> None:
    """A certificate server slower than cert_timeout_s: 503 with Retry-After, not a hang."""
    async with served(redis_url, paypal_config(pki, cert_timeout_s=0.2)) as client:
        body = event()
        headers = signed(pki.certificates["slow"], cert_servers.url("slow"), body)
        response = await client.post(PATH, content=body, headers=headers)
    assert response.status_code == 503
    assert "retry-after" in response.headers


def utf8_headers(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values sent as their UTF-8 bytes (httpx sends str values as ASCII only)."""
    return {name: value.encode() for name, value in headers.items()}


async def test_non_ascii_transmission_id(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers
) -> None:
    """A transmission id outside ASCII (and outside latin-1) is checked over the UTF-8 bytes
    sent: signed over those, 202; signed over other bytes, 401; never a 5xx."""
    url = cert_servers.url("good")
    good = pki.certificates["good"]
    for transmission_id in ("tx-\u20ac-1", "tx-\u00e9-1"):
        body = event()
        headers = signed(good, url, body, transmission_id=transmission_id)
        response = await client.post(PATH, content=body, headers=utf8_headers(headers))
        assert response.status_code == 202, (transmission_id, response.text)
    body = event()
    latin = signed(good, url, body, transmission_id="tx-\u00e9-2", encoding="latin-1")
    response = await client.post(PATH, content=body, headers=utf8_headers(latin))
    assert response.status_code == 401


@pytest.mark.parametrize(
    "signature",
    ["not base64!", "QUJD RA==", "QUJDRA=", "\u00e9QUJD"],
    ids=["alphabet", "inner-space", "padding", "non-ascii"],
)
async def test_signature_not_base64(
    client: httpx.AsyncClient, pki: Pki, cert_servers: CertServers, signature: str
) -> None:
    """A PAYPAL-TRANSMISSION-SIG that is not strict base64: 401, with its reason logged."""
    body = event()
    headers = signed(pki.certificates["good"], cert_servers.url("good"), body)
    headers["paypal-transmission-sig"] = signature
    with structlog.testing.capture_logs() as logs:
        response = await client.post(PATH, content=body, headers=utf8_headers(headers))
    assert response.status_code == 401
    [line] = request_lines(logs)
    assert line["reason"] == "PAYPAL-TRANSMISSION-SIG is not base64"


async def test_cached_url_not_checked_again(
    client: httpx.AsyncClient,
    pki: Pki,
    cert_servers: CertServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The certificate URL is checked once, before its fetch; requests naming the cached URL
    skip the check, while a URL outside cert_hosts is checked (and refused) every time."""
    checked: Counter[str] = Counter()
    check = paypal.check_cert_url

    def counting(url: str, hosts: Any) -> None:
        checked[url] += 1
        check(url, hosts)

    monkeypatch.setattr(paypal, "check_cert_url", counting)
    url = cert_servers.url("second")
    outside = cert_servers.url("second", host="127.0.0.1")
    key = pki.certificates["second"]
    for _ in range(5):
        body = event()
        response = await client.post(PATH, content=body, headers=signed(key, url, body))
        assert response.status_code == 202
        body = event()
        response = await client.post(PATH, content=body, headers=signed(key, outside, body))
        assert response.status_code == 401
    assert checked == {url: 1, outside: 5}
    assert cert_servers.fetches["second"] == 1


async def test_certificate_keys_check_before_fetching() -> None:
    """CertificateKeys itself refuses a URL that may not be fetched (401), without calling its
    fetcher and without caching anything: a cached URL has always passed the check."""
    fetched: list[str] = []

    async def fetcher(url: str) -> bytes:
        fetched.append(url)
        return b""

    keys = paypal.CertificateKeys(
        hosts=["paypal.com"], subject_cn=CN, extra_roots=[], ttl_s=60, max_entries=4
    )
    keys.fetcher = fetcher
    for url in (
        "http://paypal.com/cert",
        "https://evil.example/cert",
        "https://user:pw@paypal.com/cert",
        "https://paypal.com:bad/cert",
    ):
        with pytest.raises(NotAuthentic):
            await keys.key_for(url)
        assert keys.cached(url) is None
    assert fetched == []
    with pytest.raises(NotAuthentic, match="no certificate"):  # allowed: fetched, then refused
        await keys.key_for("https://paypal.com/cert")
    assert fetched == ["https://paypal.com/cert"]
    assert keys.cached("https://paypal.com/cert") is None


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    """PUT on the PayPal source: 405."""
    assert (await client.put(PATH, content=b"{}")).status_code == 405


def test_options_checked_at_load(tmp_path: Path) -> None:
    """Configuration errors name the source and the field."""
    with pytest.raises(SourceConfigError, match=r"source 'paypal': webhook_id"):
        build_sources({"paypal": {}})
    with pytest.raises(SourceConfigError, match=r"source 'paypal': cert_ca_file"):
        build_sources({"paypal": {"webhook_id": "W", "cert_ca_file": str(tmp_path / "none.pem")}})
    with pytest.raises(SourceConfigError, match=r"source 'paypal': cert_hosts"):
        build_sources({"paypal": {"webhook_id": "W", "cert_hosts": ["https://x/"]}})
