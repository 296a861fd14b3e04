"""PayPal's certificates, played by the sandbox: generated at start, served over https.

At start: a CA, a leaf certificate (subject CN ``messageverificationcerts.paypal.com`` unless
configured otherwise) whose key signs the PayPal webhooks, and a TLS server certificate for
127.0.0.1/localhost (and the configured host), both issued by that CA. The leaf PEM is served at
``https://<host>:<port>/v1/notifications/certs/CERT-kartahook-sandbox``; the CA PEM is written to
a file so kartahook can trust it (the paypal source's ``cert_ca_file``).

The https server is a few lines of asyncio: it answers ``GET`` of that one path and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox.providers.base import ProviderSettings

log = structlog.get_logger("sandbox.paypal")

CERT_PATH = "/v1/notifications/certs/CERT-kartahook-sandbox"
VALIDITY = datetime.timedelta(days=30)
_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PayPalCertificates:
    """The generated material. Only ``ca_pem`` and ``leaf_pem`` are public."""

    ca_pem: bytes
    leaf_pem: bytes
    signing_key: rsa.RSAPrivateKey
    tls_cert_pem: bytes  # the server certificate followed by the CA
    tls_key_pem: bytes


@dataclass(frozen=True)
class PayPalCertService:
    """The running certificate server: where the leaf is, where the CA PEM was written."""

    certificates: PayPalCertificates
    cert_url: str
    ca_file: str

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        return self.certificates.signing_key


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "KartaHook Sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if str(address) != "127.0.0.1":
            names.append(x509.IPAddress(address))
    return names


def generate(
    cn: str = "messageverificationcerts.paypal.com", host: str = "127.0.0.1"
) -> PayPalCertificates:
    """A CA, a leaf with subject CN ``cn`` for signing, and a TLS certificate for ``host``."""
    ca_key, leaf_key, tls_key = _key(), _key(), _key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "KartaHook Sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, "KartaHook Sandbox PayPal CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)

    def issued(
        name: x509.Name, key: rsa.RSAPrivateKey, sans: list[x509.GeneralName]
    ) -> x509.Certificate:
        return (
            _builder(name, ca_name, key.public_key())
            .add_extension(aki, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    leaf = issued(_leaf_name(cn), leaf_key, [x509.DNSName(cn)])
    tls = issued(_leaf_name("localhost"), tls_key, _san(host))
    return PayPalCertificates(
        ca_pem=_pem(ca),
        leaf_pem=_pem(leaf),
        signing_key=leaf_key,
        tls_cert_pem=_pem(tls) + _pem(ca),
        tls_key_pem=tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _tls_context(certificates: PayPalCertificates) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="kartahook-sandbox-tls-") as directory:
        cert_file = Path(directory, "cert.pem")
        key_file = Path(directory, "key.pem")
        cert_file.write_bytes(certificates.tls_cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(certificates.tls_key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _handler(
    leaf_pem: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            target = rest.split(" ", 1)[0].split("?", 1)[0]
            if method == "GET" and target == CERT_PATH:
                writer.write(_response("200 OK", leaf_pem, "application/x-pem-file"))
            else:
                writer.write(_response("404 Not Found", b"not found\n", "text/plain"))
            await writer.drain()
        except (
            TimeoutError,
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    return handle


def _write_ca(ca_pem: bytes, path: str | None) -> str:
    """Write the CA PEM to ``path``, or to a new temporary file; return where."""
    if path is not None:
        Path(path).write_bytes(ca_pem)
        return path
    descriptor, name = tempfile.mkstemp(prefix="kartahook-sandbox-paypal-ca-", suffix=".pem")
    with os.fdopen(descriptor, "wb") as out:
        out.write(ca_pem)
    return name


@contextlib.asynccontextmanager
async def serve(settings: ProviderSettings) -> AsyncIterator[PayPalCertService]:
    """Generate the certificates, write the CA PEM, serve the leaf over https until exit."""
    certificates = await asyncio.to_thread(
        generate, settings.paypal_cert_cn, settings.paypal_cert_host
    )
    context = await asyncio.to_thread(_tls_context, certificates)
    ca_file = await asyncio.to_thread(_write_ca, certificates.ca_pem, settings.paypal_ca_out)
    temporary = settings.paypal_ca_out is None
    server = await asyncio.start_server(
        _handler(certificates.leaf_pem),
        settings.paypal_cert_host,
        settings.paypal_cert_port,
        ssl=context,
    )
    port = server.sockets[0].getsockname()[1]
    host = settings.paypal_cert_host
    url_host = f"[{host}]" if ":" in host else host
    service = PayPalCertService(certificates, f"https://{url_host}:{port}{CERT_PATH}", ca_file)
    log.info("paypal certificate served", cert_url=service.cert_url, ca_file=ca_file)
    try:
        yield service
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
        if temporary:
            with contextlib.suppress(OSError):
                os.unlink(ca_file)
