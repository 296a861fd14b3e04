"""Durable enqueue of a verified webhook: dedupe marker and raw archive, arq job and queue entry,
atomically.

One Lua script does all three in one round trip (and Redis runs it atomically, so nothing is
ever half-written):

- ``HSETNX <the payment's event hash> <the event's field> <raw record>``: one hash per payment
  (``layout.EVENT``), one field per event (``layout.event_field``), which is both the dedupe
  marker and the archive (:func:`archive_record`: metadata, then the body as it came; for audit
  and replay), compressed (:mod:`service.store.compression`). When the field exists the event
  is a duplicate and nothing else happens; else ``EXPIRE <hash> max(dedupe_ttl_s, raw_ttl_s)``:
  each new event of a payment pushes its hash's expiry back (docs/decisions/event-hash.md);
- ``PSETEX <arq job key>`` with the job in arq's own format (JSON), as ``arq`` writes it;
- ``ZADD <queue> <enqueue ms> <job id>``, so a stock arq ``Worker`` picks it up.

:func:`read_raw_record` reads an archived record back.

An authentic event without a payment id is pushed onto the capped unroutable list
instead, and nothing is enqueued. The scripts of concurrent requests share one pipeline
(:mod:`service.store.batcher`). Keys: :mod:`service.store.layout`; scripts: ``lua/store_event.lua``,
``lua/keep_unroutable.lua``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
from collections.abc import Mapping

import orjson
import redis.asyncio as aioredis

from service.api.ingest.sources.base import VerifiedEvent
from service.domain.events import DIGEST_CHARS, event_digest
from service.settings import Settings
from service.store import compression, layout
from service.store.batcher import NotReplicated, RedisUnavailable, ScriptBatcher, bulk_string
from service.store.jobs import arq_job_bytes
from service.store.scripts import Script

UNROUTABLE_KEY = layout.UNROUTABLE
UNROUTABLE_CAP = 10_000

# Header names (or parts of names) never archived: signatures and credentials.
# "-sig": PayPal's PAYPAL-TRANSMISSION-SIG (a signature, yet not spelled "signature").
_SENSITIVE_HEADER_PARTS = (
    "signature",
    "-sig",
    "authorization",
    "secret",
    "token",
    "cookie",
    "api-key",
)
# Nor the connection's own headers (hop-by-hop, RFC 9110 7.6.1) and the body's framing: they say
# nothing about the event, and their values (lengths, ports) are what compresses worst.
_TRANSPORT_HEADERS = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept",
        "accept-encoding",
    )
)

STORE_EVENT = Script.load("store_event")
KEEP_UNROUTABLE = Script.load("keep_unroutable")

_EVENT_PREFIX = layout.prefix(layout.EVENT).encode()
_JOB_ID_PREFIX = layout.prefix(layout.EVENT_JOB_ID).encode()
_ARQ_JOB_ID_PREFIX = layout.prefix(layout.ARQ_JOB).encode() + _JOB_ID_PREFIX


def _store_template(queue_name: str, event_ttl_s: int) -> bytes:
    """``EVALSHA`` of :data:`STORE_EVENT` (RESP) as a %-format of (event key length, payment
    id, digest x 2, job length, job, enqueue ms length, enqueue ms, raw record length, raw
    record, event field length, event field).

    Every part is a length-prefixed bulk string, so any payment id a source accepts (any
    characters, up to ``MAX_ID_LENGTH``) makes a well-formed command: the key's length is
    filled in with it."""

    def constant(data: bytes) -> bytes:  # a whole bulk string, escaped for the format
        return bulk_string(data).replace(b"%", b"%%")

    def keyed(prefix: bytes) -> bytes:  # a bulk string of prefix + digest
        head = b"$%d\r\n" % (len(prefix) + DIGEST_CHARS) + prefix
        return head.replace(b"%", b"%%") + b"%b\r\n"

    variable = b"$%d\r\n%b\r\n"
    return b"".join(
        (
            b"*13\r\n",
            constant(b"EVALSHA"),
            constant(STORE_EVENT.sha.encode()),
            constant(b"3"),
            b"$%d\r\n" + _EVENT_PREFIX.replace(b"%", b"%%") + b"%b\r\n",  # the payment's hash
            keyed(_ARQ_JOB_ID_PREFIX),
            constant(queue_name.encode()),
            keyed(_JOB_ID_PREFIX),
            constant(b"%d" % event_ttl_s),
            variable,  # the arq job
            constant(b"%d" % layout.ARQ_EXPIRES_EXTRA_MS),
            variable,  # enqueue time, ms
            variable,  # the raw record, compressed
            variable,  # the event's field: the digest's head as an integer
        )
    )


class StoreResult(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


# Header names seen before, and those of them that are sensitive: for most requests one
# superset check tells that every name is known.
_KNOWN_HEADERS: set[str] = set()
_SENSITIVE_HEADERS: set[str] = set()
_KNOWN_HEADERS_MAX = 4096


def is_sensitive_header(name: str) -> bool:
    """Whether a (lower-case) header name is not archived: it holds a signature, credential or
    cookie, or belongs to the connection or the body's framing (not to the event)."""
    return name in _TRANSPORT_HEADERS or any(part in name for part in _SENSITIVE_HEADER_PARTS)


def archived_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers minus signatures, credentials, cookies and transport headers."""
    sensitive = _SENSITIVE_HEADERS
    if not _KNOWN_HEADERS.issuperset(headers):
        if len(_KNOWN_HEADERS) >= _KNOWN_HEADERS_MAX:
            return {name: v for name, v in headers.items() if not is_sensitive_header(name)}
        for name in headers.keys() - _KNOWN_HEADERS:
            if is_sensitive_header(name):
                sensitive.add(name)
            _KNOWN_HEADERS.add(name)
    return {name: value for name, value in headers.items() if name not in sensitive}


def raw_record(
    source: str, event_id: str, received_at_ms: int, headers: Mapping[str, str], body: bytes
) -> bytes:
    """The archived form of one request: JSON with the body as text (or base64 if not UTF-8)."""
    record: dict[str, object] = {
        "source": source,
        "event_id": event_id,
        "received_at_ms": received_at_ms,
        "headers": archived_headers(headers),
    }
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_b64"] = base64.b64encode(body).decode()
    return orjson.dumps(record)


def archive_record(
    source: str,
    event_id: str,
    received_at_ms: int,
    headers: Mapping[str, str],
    body: bytes,
) -> bytes:
    """The archived form of one request, as its field of its payment's event hash keeps it
    (compressed): a JSON line ``{source, event_id, received_at_ms, headers}``, then the body's
    own bytes. Not a JSON string: escaping the body's quotes costs a quarter of the compressed
    size (measured, docs/decisions/compression.md), and any body, UTF-8 or not, is kept as it
    came. The payment id is not in it (the hash's key names the payment; records written
    before the event hashes had it: :func:`read_raw_record` returns it when there)."""
    head = orjson.dumps(
        {
            "source": source,
            "event_id": event_id,
            "received_at_ms": received_at_ms,
            "headers": archived_headers(headers),
        }
    )
    return head + b"\n" + body


def read_raw_record(value: bytes) -> dict[str, object]:
    """An archived record (the value of an event key) in :func:`raw_record`'s shape: ``{source,
    event_id, received_at_ms, headers, body}`` (``body_b64`` for a body that is not UTF-8), plus
    ``payment_id`` for records written before the event hashes. Reads
    :func:`archive_record`'s form, compressed or not, and a whole JSON record (older values)."""
    data = compression.decompress(value)
    head, newline, body = data.partition(b"\n")
    if not newline:
        whole: dict[str, object] = orjson.loads(data)
        return whole
    record: dict[str, object] = orjson.loads(head)
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_b64"] = base64.b64encode(body).decode()
    return record


class EventStore:
    """Writes verified events to Redis; answers readiness questions about the queue."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        queue_name: str,
        dedupe_ttl_s: int,
        raw_ttl_s: int,
        timeout_s: float,
        unroutable_cap: int = UNROUTABLE_CAP,
        min_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.client = client
        self.queue_name = queue_name
        self.dedupe_ttl_s = dedupe_ttl_s
        self.raw_ttl_s = raw_ttl_s
        self.timeout_s = timeout_s
        self.unroutable_cap = unroutable_cap
        self.batcher = ScriptBatcher(
            client, timeout_s=timeout_s, min_replicas=min_replicas, wait_timeout_ms=wait_timeout_ms
        )
        # STORE_EVENT's command as one format: the parts that are the same for every event are
        # in it, and the per-event parts are filled in by one % operation.
        self._store_template = _store_template(queue_name, self.event_ttl_s)

    @property
    def event_ttl_s(self) -> int:
        """The event hash's TTL, from the payment's latest new event: its fields are the dedupe
        markers and the archive, so the longer of the dedupe window and the raw retention."""
        return max(self.dedupe_ttl_s, self.raw_ttl_s)

    @classmethod
    def from_settings(cls, client: aioredis.Redis, settings: Settings) -> EventStore:
        return cls(
            client,
            queue_name=settings.queue_name,
            dedupe_ttl_s=settings.dedupe_ttl_s,
            raw_ttl_s=settings.raw_ttl_s,
            timeout_s=settings.redis_timeout_s,
            min_replicas=settings.redis_min_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    async def store(self, event: VerifiedEvent, headers: Mapping[str, str]) -> StoreResult:
        """Store and enqueue ``event`` unless a duplicate; raises :class:`RedisUnavailable`
        (:class:`NotReplicated` when too few replicas have it, ``min_replicas`` > 0)."""
        reply = await self.batcher.send(STORE_EVENT, self.store_command(event, headers))
        return StoreResult.STORED if reply == 1 else StoreResult.DUPLICATE

    def store_command(self, event: VerifiedEvent, headers: Mapping[str, str]) -> bytes:
        """``EVALSHA`` of :data:`STORE_EVENT` for ``event``, packed (RESP).

        Equal to ``pack_command("EVALSHA", sha, 3, event_key(payment_id),
        arq_job_key(job_id), queue, job_id, event_ttl_s, arq_job_bytes(PROCESS_EVENT,
        EventHint(...).to_job_args(), now_ms), ARQ_EXPIRES_EXTRA_MS, now_ms,
        compress(archive_record(...)), event_field(source, event_id))`` (a test holds it to
        that), built with one digest instead of three and with the constant parts packed once.
        """
        source, event_id, payment_id, now_ms, body = event
        digest_text = event_digest(source, event_id)
        digest = digest_text.encode()
        pid = payment_id.encode()
        field = b"%d" % layout.digest_number(digest_text)
        # The job argument is EventHint(source, event_id, payment_id, now_ms).to_job_args();
        # dataclasses.asdict deep-copies and is slow on the hot path.
        job_args = [
            {
                "source": source,
                "event_id": event_id,
                "payment_id": payment_id,
                "received_at_ms": now_ms,
                "attempt": 0,
            }
        ]
        job = arq_job_bytes(layout.PROCESS_EVENT, job_args, now_ms)
        now = b"%d" % now_ms
        # The payment id is not archived: the event hash's key names it.
        raw = compression.compress(archive_record(source, event_id, now_ms, headers, body))
        return self._store_template % (
            len(_EVENT_PREFIX) + len(pid),
            pid,
            digest,
            digest,
            len(job),
            job,
            len(now),
            now,
            len(raw),
            raw,
            len(field),
            field,
        )

    async def keep_unroutable(
        self,
        source: str,
        event_id: str,
        received_at_ms: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        """Keep an authentic event that names no payment. Raises :class:`RedisUnavailable`."""
        await self.batcher.call(
            KEEP_UNROUTABLE,
            (UNROUTABLE_KEY,),
            (raw_record(source, event_id, received_at_ms, headers, body), self.unroutable_cap),
        )

    async def backlog(self) -> int:
        """Jobs waiting in the queue (ZCARD). Raises :class:`RedisUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return int(await self.client.zcard(self.queue_name))
        except Exception as exc:
            raise RedisUnavailable(f"redis unavailable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.batcher.close()


__all__ = [
    "KEEP_UNROUTABLE",
    "STORE_EVENT",
    "UNROUTABLE_KEY",
    "EventStore",
    "NotReplicated",
    "RedisUnavailable",
    "StoreResult",
    "archive_record",
    "archived_headers",
    "raw_record",
    "read_raw_record",
]
