"""The ``paypal`` source: RSA signatures checked against a certificate fetched from PayPal.

PayPal signs ``<transmission id>|<transmission time>|<webhook id>|<crc32 of the body>`` (the CRC
as unsigned decimal, the webhook id the one configured here) with SHA256withRSA, and names in
``PAYPAL-CERT-URL`` the certificate that checks it. That URL is attacker-supplied, so:

- it is fetched only over https, only from ``cert_hosts`` (``paypal.com``, ``*.paypal.com`` by
  default), without following redirects, with a timeout and a size limit; anything else is 401
  and nothing is fetched;
- the certificate (a PEM leaf, possibly followed by intermediates) must chain to a trusted root
  (the system's plus ``cert_ca_file``), be within its validity, name ``cert_subject_cn`` as its
  subject CN and in its subject alternative names; else 401;
- a verified certificate's key is cached per URL (at most ``cert_cache_size`` URLs, each for
  ``cert_cache_ttl_s`` and never past the chain's validity), and concurrent requests for one URL
  share one fetch; a URL is checked before it is fetched, so a request naming a cached URL
  skips the check (no URL parsing per request: the hosts do not change while the source lives);
- a certificate that cannot be fetched (network error, timeout, non-200) makes the answer 503
  with ``Retry-After``: PayPal retries, and nothing unverified is acknowledged or refused.

The HTTP client is made when the app starts (:meth:`PayPalSource.start`); it trusts the system's
roots plus ``cert_ca_file`` for the certificate host's own TLS. Tests may inject a fetcher.

Per request, with the certificate cached, what is left is the RSA verification itself
(``RSAPublicKey.verify``, OpenSSL's speed), a CRC32 of the body and a few µs of header work
(docs/benchmarks.md, "Ingestion per source").
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import ssl
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from pydantic import Field, field_validator

from service.api.ingest.sources.base import (
    InboundRequest,
    MalformedRequest,
    NotAuthentic,
    Source,
    SourceOptions,
    SourceUnavailable,
    VerifiedEvent,
)
from service.errors import KartahookError

AUTH_ALGORITHM = "SHA256withRSA"
MAX_CERTIFICATE_BYTES = 64 * 1024
DEFAULT_CERT_HOSTS = ("paypal.com", "*.paypal.com")
DEFAULT_CERT_SUBJECT_CN = "messageverificationcerts.paypal.com"
# Stateless parameters of every verification: made once, not per request.
_PADDING = padding.PKCS1v15()
_HASH = hashes.SHA256()

CertificateFetcher = Callable[[str], Awaitable[bytes]]
"""Fetches a certificate URL (already checked) and returns its body; raises
:class:`CertificateFetchError` when it cannot."""


class CertificateFetchError(KartahookError):
    """The certificate URL could not be fetched (network, timeout, status, size)."""


class PayPalOptions(SourceOptions):
    webhook_id: str = Field(min_length=1, description="The webhook id PayPal signs with.")
    cert_hosts: list[str] = Field(
        list(DEFAULT_CERT_HOSTS), min_length=1, description="Hosts the certificate may come from."
    )
    cert_subject_cn: str = Field(DEFAULT_CERT_SUBJECT_CN, min_length=1)
    cert_ca_file: Path | None = Field(None, description="Extra trusted roots (PEM).")
    cert_timeout_s: float = Field(5.0, gt=0, le=60)
    cert_cache_ttl_s: int = Field(3600, gt=0, le=7 * 86400)
    cert_cache_size: int = Field(64, gt=0, le=10_000)

    @field_validator("webhook_id")
    @classmethod
    def _webhook_id(cls, webhook_id: str) -> str:
        if not webhook_id.strip():
            raise ValueError("empty (is its ${ENV} variable set?)")
        try:
            webhook_id.encode()  # part of every signed message
        except UnicodeEncodeError:
            raise ValueError("not encodable as UTF-8") from None
        return webhook_id.strip()

    @field_validator("cert_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        cleaned = []
        for host in hosts:
            name = host.strip().lower().rstrip(".")
            bare = name.removeprefix("*.")
            if not bare or "*" in bare or "/" in bare or ":" in bare or " " in bare:
                raise ValueError(f"{host!r} is not a host name or *.domain")
            cleaned.append(name)
        return cleaned

    @field_validator("cert_ca_file")
    @classmethod
    def _ca_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            load_pem_certificates(path)  # raises ValueError with the reason
        return path


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM file; ValueError when it cannot be read or holds none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror})") from None
    certificates = parse_pem_certificates(data)
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return certificates


def parse_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that parses (one bad entry does not spoil the rest)."""
    certificates = []
    end = b"-----END CERTIFICATE-----"
    for block in data.split(end)[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start < 0:
            continue
        try:
            with warnings.catch_warnings():
                # Some system bundles hold old roots with non-positive serial numbers.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certificates.append(x509.load_pem_x509_certificate(block[start:] + end))
        except ValueError:
            continue
    return certificates


@functools.cache
def system_roots() -> tuple[x509.Certificate, ...]:
    """The system's trusted roots (OpenSSL's default CA file; certifi's bundle as a fallback)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            roots = parse_pem_certificates(Path(candidate).read_bytes())
            if roots:
                return tuple(roots)
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ()
    return tuple(parse_pem_certificates(Path(certifi.where()).read_bytes()))


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """``host`` equals a pattern, or is a subdomain (any depth) of a ``*.domain`` pattern."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


class HttpxCertificateFetcher:
    """Fetches certificates with an ``httpx.AsyncClient`` (no redirects, bounded size)."""

    def __init__(self, client: httpx.AsyncClient, max_bytes: int = MAX_CERTIFICATE_BYTES) -> None:
        self.client = client
        self.max_bytes = max_bytes

    async def __call__(self, url: str) -> bytes:
        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise CertificateFetchError(f"certificate URL answered {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise CertificateFetchError("certificate larger than the limit")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise CertificateFetchError(f"certificate fetch failed: {type(exc).__name__}") from None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust for https, plus ``ca_file``'s roots."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def check_cert_url(url: str, hosts: Sequence[str]) -> None:
    """:class:`NotAuthentic` unless ``url`` is https on one of ``hosts`` (before any fetch)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise NotAuthentic("PAYPAL-CERT-URL is not a URL") from None
    if parts.scheme.lower() != "https":
        raise NotAuthentic("PAYPAL-CERT-URL is not https")
    if parts.username is not None or parts.password is not None:
        raise NotAuthentic("PAYPAL-CERT-URL carries credentials")
    if not host or not host_allowed(host, hosts):
        raise NotAuthentic("PAYPAL-CERT-URL host is not in cert_hosts")


class CertificateKeys:
    """Verified certificates' public keys by URL: bounded, with a TTL, one fetch per URL.

    A URL is checked (:func:`check_cert_url`) before it is fetched, and only a fetched and
    verified certificate's key is kept: a URL found in the cache has passed the check, so a
    request naming a cached URL skips it (the hosts do not change while the source lives).
    """

    def __init__(
        self,
        *,
        hosts: Sequence[str],
        subject_cn: str,
        extra_roots: Sequence[x509.Certificate],
        ttl_s: int,
        max_entries: int,
    ) -> None:
        self.hosts = tuple(hosts)
        self.subject_cn = subject_cn
        self.extra_roots = tuple(extra_roots)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.fetcher: CertificateFetcher | None = None
        self._entries: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[float, rsa.RSAPublicKey]]] = {}
        self._store: Store | None = None

    def cached(self, url: str) -> rsa.RSAPublicKey | None:
        """The key of a URL fetched and verified before and not expired, else None."""
        entry = self._entries.get(url)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return entry[1]

    async def key_for(self, url: str) -> rsa.RSAPublicKey:
        """The verified key of the certificate at ``url``; raises :class:`NotAuthentic` (a URL
        that may not be fetched, or not a trusted certificate) or :class:`SourceUnavailable`
        (cannot fetch)."""
        cached = self.cached(url)
        if cached is not None:
            return cached
        check_cert_url(url, self.hosts)
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.create_task(self._load(url))
            self._inflight[url] = task
            task.add_done_callback(lambda _: self._inflight.pop(url, None))
        # Shielded: one request going away does not cancel the fetch the others wait for.
        expires_at, key = await asyncio.shield(task)
        if url not in self._entries:
            self._entries[url] = (expires_at, key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return key

    async def _load(self, url: str) -> tuple[float, rsa.RSAPublicKey]:
        if self.fetcher is None:
            raise SourceUnavailable("no certificate fetcher (the app has not started)")
        try:
            pem = await self.fetcher(url)
        except CertificateFetchError as exc:
            raise SourceUnavailable(str(exc)) from None
        try:
            return self.verify_certificate(pem)
        except NotAuthentic:
            raise
        except Exception as exc:
            raise NotAuthentic(f"certificate check failed ({type(exc).__name__})") from None

    def trust_store(self) -> Store:
        if self._store is None:
            self._store = Store([*system_roots(), *self.extra_roots])
        return self._store

    def verify_certificate(self, pem: bytes) -> tuple[float, rsa.RSAPublicKey]:
        """Check a fetched PEM chain; the key and until when (monotonic) it may be cached."""
        chain = parse_pem_certificates(pem)
        if not chain:
            raise NotAuthentic("the certificate URL holds no certificate")
        leaf, intermediates = chain[0], chain[1:]
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [name.value for name in names] != [self.subject_cn]:
            raise NotAuthentic("certificate subject CN is not the configured one")
        now = datetime.now(tz=UTC)
        try:
            verifier = (
                PolicyBuilder()
                .store(self.trust_store())
                .time(now)
                .build_server_verifier(x509.DNSName(self.subject_cn))
            )
            verified = verifier.verify(leaf, intermediates)
        except (VerificationError, ValueError) as exc:
            raise NotAuthentic(f"certificate not trusted: {exc}") from None
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise NotAuthentic("certificate key is not RSA")
        valid_for = min(cert.not_valid_after_utc for cert in verified) - now
        lifetime = min(float(self.ttl_s), max(valid_for.total_seconds(), 0.0))
        return time.monotonic() + lifetime, key


class PayPalSource(Source):
    """``POST`` with PayPal's ``PAYPAL-TRANSMISSION-*`` headers, checked with RSA."""

    options_model = PayPalOptions
    default_event_id: ClassVar[str | tuple[str, ...] | None] = "id"
    default_payment_id: ClassVar[str | None] = "resource.custom_id"
    is_async: ClassVar[bool] = True

    def __init__(self, name: str, options: SourceOptions) -> None:
        super().__init__(name, options)
        assert isinstance(options, PayPalOptions)
        self.webhook_id = options.webhook_id
        self.cert_hosts = tuple(options.cert_hosts)
        self.cert_ca_file = options.cert_ca_file
        self.cert_timeout_s = options.cert_timeout_s
        extra = load_pem_certificates(options.cert_ca_file) if options.cert_ca_file else []
        self.certificates = CertificateKeys(
            hosts=self.cert_hosts,
            subject_cn=options.cert_subject_cn,
            extra_roots=extra,
            ttl_s=options.cert_cache_ttl_s,
            max_entries=options.cert_cache_size,
        )

    def use_fetcher(self, fetcher: CertificateFetcher | None) -> None:
        """Fetch certificates with ``fetcher`` (``start`` then keeps it)."""
        self.certificates.fetcher = fetcher

    async def start(self, stack: AsyncExitStack) -> None:
        self.certificates.trust_store()  # the system's roots parsed now, not on a request
        if self.certificates.fetcher is not None:
            return
        client = httpx.AsyncClient(
            verify=tls_context(self.cert_ca_file),
            follow_redirects=False,
            timeout=self.cert_timeout_s,
            trust_env=False,
        )
        self.certificates.fetcher = HttpxCertificateFetcher(client)

        async def close() -> None:
            self.certificates.fetcher = None
            await client.aclose()

        stack.push_async_callback(close)

    def _signed(self, request: InboundRequest) -> tuple[bytes, bytes, str]:
        """The signature, the signed message and the certificate URL of a request."""
        headers = request.headers
        signature_b64 = headers.get("paypal-transmission-sig")
        if not signature_b64:
            raise NotAuthentic("no PAYPAL-TRANSMISSION-SIG header")
        transmission_id = headers.get("paypal-transmission-id")
        transmission_time = headers.get("paypal-transmission-time")
        cert_url = headers.get("paypal-cert-url")
        algorithm = headers.get("paypal-auth-algo")
        if not transmission_id or not transmission_time or not cert_url or not algorithm:
            raise MalformedRequest("a PAYPAL-TRANSMISSION-*/CERT-URL/AUTH-ALGO header is missing")
        if algorithm.strip() != AUTH_ALGORITHM:
            raise NotAuthentic(f"unsupported PAYPAL-AUTH-ALGO {algorithm[:32]!r}")
        try:
            # Strict: only the base64 alphabet and padding (no whitespace inside).
            signature = binascii.a2b_base64(signature_b64.strip(), strict_mode=True)
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
            raise NotAuthentic("PAYPAL-TRANSMISSION-SIG is not base64") from None
        crc = zlib.crc32(request.body)
        # The endpoint decoded the header values from UTF-8: encoded back, they are the bytes
        # sent (a value that was not UTF-8 holds U+FFFD now, and its signature fails: 401).
        message = f"{transmission_id}|{transmission_time}|{self.webhook_id}|{crc}".encode()
        return signature, message, cert_url.strip()

    def check_cert_url(self, url: str) -> None:
        """401 unless ``url`` is https on an allowed host (checked before any fetch)."""
        check_cert_url(url, self.cert_hosts)

    @staticmethod
    def check_signature(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> None:
        try:
            key.verify(signature, message, _PADDING, _HASH)
        except InvalidSignature:
            raise NotAuthentic("signature does not match the certificate") from None

    def authenticate(self, request: InboundRequest) -> None:
        """The synchronous check: works only once the certificate's key is cached."""
        signature, message, url = self._signed(request)
        key = self.certificates.cached(url)
        if key is None:
            self.check_cert_url(url)
            raise SourceUnavailable("certificate not loaded (use verify_async)")
        self.check_signature(key, signature, message)

    async def verify_async(self, request: InboundRequest) -> VerifiedEvent:
        self.check_content_type(request)
        signature, message, url = self._signed(request)
        # A cached URL was checked before its certificate was fetched: no await, no URL parse.
        key = self.certificates.cached(url)
        if key is None:
            key = await self.certificates.key_for(url)  # checks the URL, then fetches
        self.check_signature(key, signature, message)
        self.check_client(request)
        return self.extract(request)
