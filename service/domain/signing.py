"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/).

Used on both sides: the ``kartapay`` source verifies inbound webhooks, delivery signs outbound
ones, and the sandbox and the demo subscriber do the same in their roles.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping, Sequence

# Defined in service.errors (the error tree), re-exported here.
from service.errors import MissingHeaderError as MissingHeaderError
from service.errors import SignatureError as SignatureError
from service.errors import TimestampError as TimestampError

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_TOLERANCE_S = 300
# Unix seconds as ASCII digits (a leading minus allowed: such a time is simply outside any
# tolerance). 15 digits reach far past any real clock yet keep the comparison with a float exact.
_TIMESTAMP = re.compile(r"-?[0-9]{1,15}")


def generate_secret() -> str:
    """A fresh ``whsec_`` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (a bare base64 string is accepted too)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from exc


_BLOCK = 64  # SHA-256's block size


@functools.lru_cache(maxsize=256)
def _keyed_sha256(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hashes, keyed with ``key`` (RFC 2104); copies of them skip
    the key setup and ``hmac.HMAC``'s Python-level ``copy`` (hot path of ingestion)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


def _signature(key: bytes, signed_prefix: bytes, body: bytes) -> bytes:
    """base64 of HMAC-SHA256(key, signed_prefix + body)."""
    inner_keyed, outer_keyed = _keyed_sha256(key)
    inner = inner_keyed.copy()
    inner.update(signed_prefix)
    inner.update(body)
    outer = outer_keyed.copy()
    outer.update(inner.digest())
    return binascii.b2a_base64(outer.digest(), newline=False)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    return "v1," + _signature(key, f"{msg_id}.{timestamp}.".encode(), body).decode()


def sign_headers(
    secret: str | Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``. Several secrets (a rotation's overlap)
    give several signatures, space-separated (``v1,<sig1> v1,<sig2>``), in their order."""
    ts = int(time.time()) if timestamp is None else timestamp
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(decode_secret(s), msg_id, ts, body) for s in secrets),
    }


def verify(
    keys: Iterable[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a message against any of ``keys`` and return its ``webhook-id``.

    Raises :class:`MissingHeaderError`, :class:`TimestampError` or :class:`SignatureError`.
    """
    msg_id = headers.get("webhook-id")
    ts_raw = headers.get("webhook-timestamp")
    sig_header = headers.get("webhook-signature")
    if not msg_id or not ts_raw or not sig_header:
        raise MissingHeaderError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _TIMESTAMP.fullmatch(ts_raw):
        # Huge numbers included: int() of 309 digits or more cannot be compared with a float.
        raise MissingHeaderError("webhook-timestamp is not an integer of at most 15 digits")
    timestamp = int(ts_raw)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise TimestampError("timestamp outside tolerance")
    offered = [
        part[3:].encode() for part in sig_header.split() if part.startswith("v1,") and len(part) > 3
    ]
    if not offered:
        raise SignatureError("no v1 signature")
    # A non-ASCII id is signed as its UTF-8 bytes, as the Standard Webhooks reference library
    # does (``f"{msg_id}.{timestamp}.{data}".encode()``). Lone surrogates cannot be encoded, so
    # no signature can match them.
    try:
        signed_prefix = f"{msg_id}.{timestamp}.".encode()
    except UnicodeEncodeError as exc:
        raise MissingHeaderError("webhook-id is not valid Unicode") from exc
    for key in keys:
        expected = _signature(key, signed_prefix, body)
        for candidate in offered:
            if hmac.compare_digest(expected, candidate):
                return msg_id
    raise SignatureError("no signature matched")
