"""The ingestion hot path's shortcuts give exactly what the plain versions give: the packed store
command, archived headers, redaction, timestamps, the log line writer, the request line written
without structlog's logger chain, and metric updates applied once per loop turn."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import structlog

from service import metrics
from service.api.app import create_app
from service.api.ingest.sources import build_sources
from service.api.ingest.sources.base import VerifiedEvent
from service.domain import events, signing
from service.logging import REDACTED, LineWriter, UTCTimeStamper, redact
from service.settings import Settings
from service.store import jobs, layout
from service.store.batcher import ScriptBatcher, pack_command, parsed_replies
from service.store.compression import compress
from service.store.events import (
    STORE_EVENT,
    EventStore,
    archive_record,
    archived_headers,
)
from service.store.scripts import Script
from tests.support import serve_app

ROOT = Path(__file__).resolve().parents[3]


def reference_store_command(store: EventStore, event: VerifiedEvent, headers: Any) -> bytes:
    """STORE_EVENT's EVALSHA packed the plain way, from the layout and job helpers."""
    hint = events.EventHint(event.source, event.event_id, event.payment_id, event.received_at_ms)
    return pack_command(
        "EVALSHA",
        STORE_EVENT.sha,
        3,
        layout.event_key(event.payment_id),
        layout.arq_job_key(layout.hint_job_id(hint)),
        store.queue_name,
        layout.hint_job_id(hint),
        store.event_ttl_s,
        jobs.arq_job_bytes(layout.PROCESS_EVENT, hint.to_job_args(), event.received_at_ms),
        layout.ARQ_EXPIRES_EXTRA_MS,
        event.received_at_ms,
        compress(
            archive_record(
                event.source,
                event.event_id,
                event.received_at_ms,
                headers,
                event.body,
            )
        ),
        layout.event_field(event.source, event.event_id),
    )


@pytest.mark.parametrize(
    ("source", "event_id", "payment_id", "body"),
    [
        ("kartapay", "msg_1", "pay_1", b'{"data":{"id":"pay_1"}}'),
        ("kp-eu", "évènement/ü 42", "paiement/ü 42", '{"x":"ü"}'.encode()),
        ("kartapay", "msg_bin", "pay_%d%b\r\n$5", b"\xff\xfe not utf-8"),
        ("kartapay", "msg_long", "p" * 256, b"{}"),
        ("kartapay", "msg_empty", "", b"{}"),
    ],
)
def test_packed_store_command_equals_the_plain_one(
    source: str, event_id: str, payment_id: str, body: bytes
) -> None:
    """store_command() packs byte for byte what pack_command() with the layout's keys packs,
    whatever the payment id (its key's length varies)."""
    client = aioredis.Redis()
    store = EventStore(client, queue_name="q:%s", dedupe_ttl_s=345_600, raw_ttl_s=7, timeout_s=1)
    event = VerifiedEvent(source, event_id, payment_id, 1_700_000_000_123, body)
    headers = {"content-type": "application/json", "webhook-signature": "v1,abc", "x-a": "b"}
    assert store.store_command(event, headers) == reference_store_command(store, event, headers)


def test_archived_headers_drop_credentials_on_every_call() -> None:
    """Signature (PayPal's -sig too), credential, cookie and transport headers are dropped, the
    first time and once known."""
    headers = {
        "content-type": "application/json",
        "webhook-signature": "v1,abc",
        "authorization": "Bearer x",
        "x-api-key": "k",
        "x-custom-token": "t",
        "paypal-transmission-sig": "c2lnbmF0dXJl",
        "paypal-transmission-id": "tid-1",
        "cookie": "c",
        "webhook-id": "msg_1",
        "content-length": "12",
        "connection": "keep-alive",
        "accept-encoding": "gzip",
    }
    expected = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "paypal-transmission-id": "tid-1",
    }
    for _ in range(3):
        assert archived_headers(headers) == expected
    assert archived_headers({"x-new-secret-header": "s", "x-new": "n"}) == {"x-new": "n"}


def test_redaction_of_known_and_new_keys_at_any_depth() -> None:
    """Sensitive keys are redacted in any case and depth; a clean line is returned unchanged,
    and nested dicts are copied rather than changed."""
    clean = {"event": "request", "status": 202, "duration_ms": 1.5, "client": None}
    assert redact(None, "", dict(clean)) == clean
    assert redact(None, "", dict(clean)) == clean  # keys now known to be safe
    payer = {"email": "a@b.c", "inner": {"Token": "t", "ok": 1}}
    line = redact(None, "", {**clean, "payer_info": payer, "Webhook-Signature": "v1,x"})
    assert line["Webhook-Signature"] == REDACTED
    assert line["payer_info"] == {"email": REDACTED, "inner": {"Token": REDACTED, "ok": 1}}
    assert payer == {"email": "a@b.c", "inner": {"Token": "t", "ok": 1}}
    assert redact(None, "", {**clean, "secret": "s"})["secret"] == REDACTED


def test_timestamp_is_iso_utc_with_microseconds() -> None:
    """The timestamp is ISO 8601 UTC with microseconds and Z, and tells the current time."""
    stamper = UTCTimeStamper()
    before = time.time()
    stamps = [stamper(None, "info", {})["timestamp"] for _ in range(3)]
    after = time.time()
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert before - 1 <= when + float("0" + stamp[19:26]) <= after + 1


class CountingStream(io.RawIOBase):
    """A binary stream recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


def test_line_writer_outside_a_loop_writes_each_line_at_once() -> None:
    """Without a running event loop every line is written when it is logged."""
    stream = CountingStream()
    writer = LineWriter(stream)  # type: ignore[arg-type]
    writer.msg(b'{"a":1}\n')
    writer.info("text line")
    assert stream.writes == [b'{"a":1}\n', b"text line\n"]


async def test_line_writer_in_a_loop_writes_one_turn_in_one_write() -> None:
    """Lines logged during one event-loop turn reach the stream together, by the next turn."""
    stream = CountingStream()
    writer = LineWriter(stream)  # type: ignore[arg-type]
    for i in range(3):
        writer.msg(b"%d\n" % i)
    assert stream.writes == []
    await asyncio.sleep(0)
    assert stream.writes == [b"0\n1\n2\n"]
    writer.msg(b"3\n")
    await asyncio.sleep(0)
    assert stream.writes == [b"0\n1\n2\n", b"3\n"]


def test_line_writer_on_a_text_stream() -> None:
    """A text stream without a binary buffer (StringIO) gets the lines as text."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.msg(b'{"a":1}\n')
    assert stream.getvalue() == '{"a":1}\n'


def test_configured_logging_writes_json_lines_and_still_captures() -> None:
    """After configure_logging (cached loggers): one JSON line per call on stdout, with context,
    level and timestamp, secrets redacted, lines of a loop turn kept; capture_logs still sees
    lines of an already cached logger."""
    script = textwrap.dedent(
        """
        import asyncio, structlog
        from service.logging import configure_logging
        configure_logging("json", "INFO")
        log = structlog.get_logger("t")
        log.info("before", n=0)
        async def main():
            structlog.contextvars.bind_contextvars(request_id="r1")
            for i in range(3):
                log.info("request", n=i, secret="s3cr3t", nested={"email": "e@x"})
            log.debug("hidden")
        asyncio.run(main())
        with structlog.testing.capture_logs() as entries:
            log.info("captured", n=9)
        assert [e["event"] for e in entries] == ["captured"], entries
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=True
    )
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["before", "request", "request", "request"]
    assert [line["n"] for line in lines[1:]] == [0, 1, 2]
    for line in lines[1:]:
        assert line["request_id"] == "r1" and line["level"] == "info"
        assert line["secret"] == REDACTED and line["nested"] == {"email": REDACTED}
        assert line["timestamp"].endswith("Z")
    assert b"s3cr3t" not in result.stdout and b"e@x" not in result.stdout


def test_fast_json_line_is_the_structlog_line() -> None:
    """write_json_line writes what the configured structlog logger writes for the same call
    (same keys in the same order, bound context, level, redaction), honours the level, and
    declines (returns False) under capture_logs or the console format."""
    script = textwrap.dedent(
        """
        import asyncio, structlog
        from service.logging import configure_logging, write_json_line
        configure_logging("json", "INFO")
        log = structlog.get_logger("t")
        def fields():
            return {"source": "s", "status": 202, "duration_ms": 1.5, "client": None,
                    "Signature": "v1,x", "nested": {"email": "e@x", "n": 1}}
        async def main():
            structlog.contextvars.bind_contextvars(request_id="r1", status="bound")
            log.info("request", **fields())
            assert write_json_line("info", "request", fields())
            assert write_json_line("debug", "request", fields())
        asyncio.run(main())
        with structlog.testing.capture_logs() as entries:
            assert not write_json_line("info", "request", fields())
        assert entries == []
        configure_logging("console", "INFO")
        assert not write_json_line("info", "request", fields())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=60, check=True
    )
    structlog_line, fast_line = (orjson.loads(line) for line in result.stdout.splitlines())
    assert fast_line.pop("timestamp").endswith("Z") and structlog_line.pop("timestamp")
    assert list(fast_line.items()) == list(structlog_line.items())
    assert fast_line["request_id"] == "r1" and fast_line["status"] == 202
    assert fast_line["Signature"] == REDACTED and fast_line["nested"]["email"] == REDACTED


def _sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_webhook_metrics_are_applied_at_the_end_of_the_loop_turn() -> None:
    """Counts and ack times recorded during one loop turn reach the prometheus metrics together,
    by the next turn; outside a loop they are applied at once."""
    total = ("kartahook_webhooks_total", {"source": "turn-test", "outcome": "accepted"})
    acks = ("kartahook_ack_seconds_count", {"source": "turn-test"})
    fast = ("kartahook_ack_seconds_bucket", {"source": "turn-test", "le": "0.001"})
    before = [_sample(*total), _sample(*acks), _sample(*fast)]
    recorder = metrics.WebhookMetrics()
    for seconds in (0.0005, 0.003, 0.0007):
        recorder.count("turn-test", "accepted")
        recorder.observe_ack("turn-test", seconds)
    assert [_sample(*total), _sample(*acks), _sample(*fast)] == before
    await asyncio.sleep(0)
    assert [_sample(*total), _sample(*acks), _sample(*fast)] == [
        before[0] + 3,
        before[1] + 3,
        before[2] + 2,
    ]
    await asyncio.to_thread(recorder.count, "turn-test", "accepted")
    assert _sample(*total) == before[0] + 4


def test_signatures_from_cached_keys_match_a_fresh_hmac() -> None:
    """sign() with a key used before still gives the HMAC of this message, not a stale one."""
    key = signing.decode_secret(signing.generate_secret())
    for msg_id, body in (("m1", b"{}"), ("m2", b'{"a":1}'), ("m1", b"{}")):
        mac = hmac.new(key, f"{msg_id}.5.".encode() + body, hashlib.sha256).digest()
        assert signing.sign(key, msg_id, 5, body) == "v1," + base64.b64encode(mac).decode()


@pytest.mark.parametrize("key_length", [1, 32, 63, 64, 65, 200])
def test_signatures_from_precomputed_hashes_are_the_hmac(key_length: int) -> None:
    """The inner and outer hashes kept per key give HMAC-SHA256 for keys shorter than, as long
    as and longer than SHA-256's block (a long key is hashed first)."""
    key = os.urandom(key_length)
    body = os.urandom(300)
    mac = hmac.new(key, b"msg.5." + body, hashlib.sha256).digest()
    assert signing.sign(key, "msg", 5, body) == "v1," + base64.b64encode(mac).decode()


async def test_batcher_hands_each_caller_its_own_reply_from_parsed_replies(
    redis: aioredis.Redis,
) -> None:
    """Replies taken straight from the hiredis reader reach their callers in order, an error
    reply included (NOSCRIPT: reloaded and sent again), across several batches."""
    echo = Script("return tonumber(ARGV[1])")
    batcher = ScriptBatcher(redis, timeout_s=2)
    try:
        assert await batcher.call(echo, (), (0,)) == 0
        assert batcher._conn is not None
        assert parsed_replies(batcher._conn) is not None  # the fast path is in use
        await redis.script_flush()
        first = [batcher.call(echo, (), (i,)) for i in range(1, 200)]
        await asyncio.sleep(0)
        second = [batcher.call(echo, (), (i,)) for i in range(200, 400)]
        assert await asyncio.gather(*first, *second) == list(range(1, 400))
    finally:
        await batcher.close()


async def test_rejection_lines_carry_endpoint_fields_and_bound_context(redis_url: str) -> None:
    """Fields the endpoint and the body limit add reach the request line of a 404 and a 413,
    and context bound with structlog.contextvars still reaches it (request_id)."""
    sources = build_sources({"kartapay": {"secrets": [signing.generate_secret()]}})
    app = create_app(Settings(redis_url=redis_url, sources_file=None), sources)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            missing = await http.post("/v1/webhooks/nope", content=b"{}")
            too_large = await http.post("/v1/webhooks/kartapay", content=b"x" * 300_000)
    assert (missing.status_code, too_large.status_code) == (404, 413)
    lines = {e["status"]: e for e in entries if e["event"] == "request"}
    assert lines[404]["outcome"] == "unknown_source" and lines[404]["source"] == "unknown"
    assert lines[404]["reason"] and lines[404]["request_id"] == missing.headers["x-request-id"]
    assert (lines[413]["outcome"], lines[413]["source"]) == ("too_large", "kartapay")
    assert lines[413]["request_id"] == too_large.headers["x-request-id"]
