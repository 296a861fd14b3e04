"""Fuzzing the front door (issue 12, item 1): a real ``kartahook serve`` process, more than
10,000 mutated raw HTTP/1.1 requests over many keep-alive connections (some pipelined, some
half-closed), and not one answer 5xx, not one unsigned request answered 2xx.

The generator is seeded (``KARTAHOOK_FUZZ_SEED`` replays a run; the seed is printed). Each
request is built from a valid signed webhook and zero or more mutations; a mutation says whether
it breaks authenticity (the request must then not get a 2xx), whether the connection may end
after it (framing errors, ``Connection: close``, 413, 431: it is the last of its connection),
and whether it may go unanswered (a half-closed connection waiting for a body).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from service.domain.signing import decode_secret, generate_secret, sign
from service.store.server import free_port
from tests.support import exit_code, start_kartahook

SECRET = generate_secret()
MAX_BODY = 4096
REQUESTS = 10_500
CONNECTIONS = 48
PATH = b"/v1/webhooks/kartapay"


@dataclass
class Req:
    """One request being built, then its raw bytes and what it may be answered."""

    n: int
    method: bytes = b"POST"
    path: bytes = PATH
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    framing: str = "length"  # length | chunked | raw (the mutation wrote the framing itself)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw: bytes | None = None
    valid: bool = True
    terminal: bool = False  # the connection may end after it
    half_close: bool = False
    leftover: bool = False  # sends bytes past its end, which the server reads as a request
    mutations: list[str] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def set_header(self, name: bytes, value: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name] + [(name, value)]

    def drop_header(self, name: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [self.method + b" " + self.path + b" " + self.version, b"host: fuzz"]
        lines += [k + b": " + v for k, v in self.headers]
        if self.framing == "length":
            lines.append(b"content-length: " + str(len(self.body)).encode())
            return b"\r\n".join(lines) + b"\r\n\r\n" + self.body
        lines.append(b"transfer-encoding: chunked")
        chunks = b""
        rest = self.body
        while rest:
            piece, rest = rest[:1500], rest[1500:]
            chunks += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        trailer = b"".join(k + b": " + v + b"\r\n" for k, v in self.trailers)
        return b"\r\n".join(lines) + b"\r\n\r\n" + chunks + b"0\r\n" + trailer + b"\r\n"


def signed_request(rng: random.Random, n: int, seed: int) -> Req:
    """A valid webhook, signed by the Standard Webhooks reference library."""
    msg_id = rng.choice([f"fz-{seed}-{n}", f"fz-é-{seed}-{n}", f"fz.{seed}.{n}-支付"])
    body = orjson.dumps(
        {"type": "payment.captured", "data": {"id": f"pay_{n % 97}", "status": "captured"}}
    )
    when = datetime.now(tz=UTC)
    signature = Webhook(SECRET).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    return Req(
        n,
        headers=[
            (b"content-type", b"application/json"),
            (b"webhook-id", msg_id.encode()),
            (b"webhook-timestamp", str(int(when.timestamp())).encode()),
            (b"webhook-signature", signature.encode()),
        ],
        body=body,
    )


def _b64(rng: random.Random, size: int = 32) -> bytes:
    return base64.b64encode(rng.randbytes(size))


# A mutation is a function; MUTATIONS below says whether it makes the request one the service
# must not accept (a broken signature, id, timestamp, header or framing, a refused size, path or
# method). Functions set ``terminal``, ``half_close`` and ``leftover`` themselves.
Mutation = Callable[[Req, random.Random], None]


def m_sig_wrong(r: Req, rng: random.Random) -> None:
    r.set_header(b"webhook-signature", b"v1," + _b64(rng))


def m_sig_truncated(r: Req, rng: random.Random) -> None:
    entries = (r.header(b"webhook-signature") or b"").split(b" ")
    cut = [entry[: rng.randrange(0, max(1, len(entry) - 1))] for entry in entries]
    r.set_header(b"webhook-signature", b" ".join(cut))  # every entry cut short


def m_sig_many_garbage(r: Req, rng: random.Random) -> None:
    entries = [
        rng.choice([b"v1,", b"v2,", b"v1a,", b""]) + _b64(rng) for _ in range(rng.randrange(2, 600))
    ]
    r.set_header(b"webhook-signature", b" ".join(entries))
    r.terminal = True  # may pass the header limit (431 closes)


def m_sig_many_with_valid(r: Req, rng: random.Random) -> None:
    sig = r.header(b"webhook-signature") or b""
    entries = [b"v1," + _b64(rng) for _ in range(rng.randrange(1, 20))]
    entries.insert(rng.randrange(len(entries) + 1), sig)
    r.set_header(b"webhook-signature", b" ".join(entries))


def m_sig_other_body(r: Req, rng: random.Random) -> None:
    msg_id = (r.header(b"webhook-id") or b"x").decode(errors="replace")
    when = datetime.now(tz=UTC)
    other = Webhook(SECRET).sign(msg_id=msg_id, timestamp=when, data='{"data":{"id":"other"}}')
    r.set_header(b"webhook-signature", other.encode())
    r.set_header(b"webhook-timestamp", str(int(when.timestamp())).encode())


def m_sig_wrong_key(r: Req, rng: random.Random) -> None:
    msg_id = (r.header(b"webhook-id") or b"x").decode(errors="replace")
    when = datetime.now(tz=UTC)
    key = decode_secret(generate_secret())
    other = sign(key, msg_id, int(when.timestamp()), r.body)
    r.set_header(b"webhook-signature", other.encode())
    r.set_header(b"webhook-timestamp", str(int(when.timestamp())).encode())


def m_drop_auth_header(r: Req, rng: random.Random) -> None:
    r.drop_header(rng.choice([b"webhook-id", b"webhook-timestamp", b"webhook-signature"]))


def m_ts_bad(r: Req, rng: random.Random) -> None:
    now = int(time.time())
    value = rng.choice(
        [
            b"9" * rng.randrange(16, 400),
            b"9" * rng.randrange(300, 20_000),
            b"-" + str(now).encode(),
            f"{now}.5".encode(),
            b"",
            b"abc",
            "\uff11\uff17\uff10\uff10".encode(),  # fullwidth digits
            f"+{now}".encode(),
            f"{now - 10_000}".encode(),
            f"{now + 10_000}".encode(),
            f"{now:_}".encode(),
            b"0x10",
            b"1e9",
            b"nan",
            b"inf",
        ]
    )
    r.set_header(b"webhook-timestamp", value)
    r.terminal = True  # the longest are over the header limit


def m_id_changed(r: Req, rng: random.Random) -> None:
    msg_id = r.header(b"webhook-id") or b""
    r.set_header(b"webhook-id", rng.choice([msg_id + b"x", "é".encode() + msg_id, b"", b" "]))


def m_id_latin1(r: Req, rng: random.Random) -> None:
    msg_id = (r.header(b"webhook-id") or b"").decode(errors="replace")
    if msg_id.isascii():
        msg_id = "é" + msg_id
        r.set_header(b"webhook-id", msg_id.encode("utf-8", "replace"))  # signature: old id
    else:
        r.set_header(b"webhook-id", msg_id.encode("latin-1", "replace"))


def m_id_long(r: Req, rng: random.Random) -> None:
    r.set_header(b"webhook-id", b"i" * rng.randrange(257, 20_000))
    r.terminal = True


def m_content_type(r: Req, rng: random.Random) -> None:
    value = rng.choice(
        [b"text/plain", b"application/xml", b"", b"json", "application/jsön".encode()]
    )
    r.set_header(b"content-type", value)


def m_content_type_ok(r: Req, rng: random.Random) -> None:
    if r.header(b"content-type") != b"application/json":
        return  # never undo a breaking mutation
    r.set_header(
        b"content-type",
        rng.choice([b"application/json; charset=utf-8", b"Application/JSON", b"application/json "]),
    )


def m_path(r: Req, rng: random.Random) -> None:
    r.path = rng.choice(
        [
            b"/v1/webhooks/nope",
            b"/v1/webhooks/",
            b"/v1/webhooks",
            b"/v1/webhooks/kartapay/",
            b"/v1/webhooks/kartapay/x",
            b"/v1/webhooks/../webhooks/kartapay",
            b"/v1/webhooks/%2e%2e/kartapay",
            b"/v1/webhooks/karta%2Fpay",
            b"/v1/webhooks/%ff%fe",
            b"/v1/webhooks/%00",
            b"/v1/webhooks/KARTAPAY",
            b"/v1/webhooks/" + b"k" * rng.randrange(100, 30_000),
            b"/nope",
            b"//v1/webhooks/kartapay",
            b"*",
        ]
    )
    r.terminal = True  # "*" and the longest paths may be refused with the connection


def m_path_ok(r: Req, rng: random.Random) -> None:
    if r.path != PATH:
        return  # never undo a breaking mutation
    r.path = rng.choice([b"/v1/webhooks/%6Bartapay", PATH + b"?x=1&y=%ff", PATH + b"?"])


def m_method(r: Req, rng: random.Random) -> None:
    r.method = rng.choice([b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"])
    # An answer to HEAD has no body, except the raw 400 of a parse error: read it last.
    r.terminal = r.terminal or r.method == b"HEAD"


def m_method_garbage(r: Req, rng: random.Random) -> None:
    r.method = rng.choice([b"post", b"FOO", b"P\xffST", b"", b"POST POST"])
    r.terminal = True


def m_body_changed(r: Req, rng: random.Random) -> None:
    body = bytearray(r.body or b"{}")
    body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    r.body = bytes(body)


def m_body_empty_signed(r: Req, rng: random.Random) -> None:
    msg_id = (r.header(b"webhook-id") or b"x").decode(errors="replace")
    when = datetime.now(tz=UTC)
    body = rng.choice([b"", b"not json", b"[1,2", b"\xff\xfe"])
    try:
        signature = Webhook(SECRET).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    except UnicodeDecodeError:
        signature = "v1," + _b64(rng).decode()
    r.body = body
    r.set_header(b"webhook-signature", signature.encode())
    r.set_header(b"webhook-timestamp", str(int(when.timestamp())).encode())


def m_body_over_limit(r: Req, rng: random.Random) -> None:
    r.body = r.body + b" " * (MAX_BODY + rng.randrange(1, 20_000))
    r.framing = rng.choice(["length", "chunked"])
    r.terminal = True  # 413 closes the connection


def m_declared_over_limit(r: Req, rng: random.Random) -> None:
    head = [r.method + b" " + r.path + b" HTTP/1.1", b"host: fuzz"]
    head += [k + b": " + v for k, v in r.headers]
    head.append(b"content-length: " + str(rng.choice([MAX_BODY + 1, 10**9, 10**18])).encode())
    r.raw = b"\r\n".join(head) + b"\r\n\r\n"
    r.terminal = True


def m_length_mismatch(r: Req, rng: random.Random) -> None:
    head = [r.method + b" " + r.path + b" HTTP/1.1", b"host: fuzz"]
    head += [k + b": " + v for k, v in r.headers]
    if rng.random() < 0.5 or not r.body:
        declared = len(r.body) + rng.randrange(1, 100)  # waits for more: half-close
        r.half_close = True
    else:
        declared = rng.randrange(0, len(r.body))  # the rest reads as the next request
        r.leftover = True
    head.append(b"content-length: " + str(declared).encode())
    r.raw = b"\r\n".join(head) + b"\r\n\r\n" + r.body
    r.terminal = True


def m_length_garbage(r: Req, rng: random.Random) -> None:
    head = [r.method + b" " + r.path + b" HTTP/1.1", b"host: fuzz"]
    head += [k + b": " + v for k, v in r.headers]
    head += rng.choice(
        [
            [b"content-length: abc"],
            [b"content-length: -1"],
            [b"content-length: 1, 2"],
            [b"content-length: 5", b"content-length: 6"],
            [b"content-length: 5", b"transfer-encoding: chunked"],
            [b"transfer-encoding: gzip"],
            [b"transfer-encoding: chunked, chunked"],
        ]
    )
    r.raw = b"\r\n".join(head) + b"\r\n\r\n" + r.body
    r.terminal = True
    r.half_close = True


def m_chunked_bad(r: Req, rng: random.Random) -> None:
    head = [r.method + b" " + r.path + b" HTTP/1.1", b"host: fuzz"]
    head += [k + b": " + v for k, v in r.headers]
    head.append(b"transfer-encoding: chunked")
    body = r.body
    framing = rng.choice(
        [
            b"zz\r\n" + body + b"\r\n0\r\n\r\n",
            f"{len(body) + 50:x}\r\n".encode() + body,  # short chunk: half-close
            f"{len(body):x}\r\n".encode() + body + b"0\r\n\r\n",  # no CRLF after data
            b"-5\r\n" + body + b"\r\n0\r\n\r\n",
            f"{len(body):x};ext=1\r\n".encode() + body + b"\r\n0\r\n\r\n",  # valid extension
            b"ffffffffffffffffffff\r\n" + body,
            f"{len(body):x}\r\n".encode() + body + b"\r\n",  # no last chunk: half-close
        ]
    )
    r.raw = b"\r\n".join(head) + b"\r\n\r\n" + framing
    r.terminal = True
    r.half_close = True


def m_trailer_signature_only(r: Req, rng: random.Random) -> None:
    sig = r.header(b"webhook-signature") or b""
    r.drop_header(b"webhook-signature")
    r.framing = "chunked"
    r.trailers = [(b"webhook-signature", sig)]


def m_trailer_auth_only(r: Req, rng: random.Random) -> None:
    moved = [(k, v) for k, v in r.headers if k.startswith(b"webhook-")]
    r.headers = [(k, v) for k, v in r.headers if not k.startswith(b"webhook-")]
    r.framing = "chunked"
    r.trailers = moved


def m_trailer_harmless(r: Req, rng: random.Random) -> None:
    r.framing = "chunked"
    r.trailers = rng.choice(
        [
            [(b"webhook-id", b"trailer-id")],
            [(b"content-type", b"text/plain")],
            [(b"webhook-signature", b"v1," + _b64(rng))],
            [(b"webhook-timestamp", b"9" * 400)],
            [(b"x-trailer", b"1")],
            [],
        ]
    )


def m_chunked_ok(r: Req, rng: random.Random) -> None:
    r.framing = "chunked"


def m_header_huge(r: Req, rng: random.Random) -> None:
    r.headers.append((b"x-pad", b"p" * rng.randrange(16_500, 80_000)))
    r.terminal = True


def m_header_big_ok(r: Req, rng: random.Random) -> None:
    r.headers.append((b"x-pad", b"p" * rng.randrange(100, 8_000)))


def m_header_nonascii_ok(r: Req, rng: random.Random) -> None:
    r.headers.append((b"x-note", rng.choice(["é€支".encode(), b"\xff\xfe\x80", b"\xe9t\xe9"])))


def m_header_many_ok(r: Req, rng: random.Random) -> None:
    r.headers += [(f"x-h{i}".encode(), b"v") for i in range(rng.randrange(10, 200))]


def m_header_dup_same(r: Req, rng: random.Random) -> None:
    name = rng.choice([b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"content-type"])
    value = r.header(name) or b""
    r.headers.append((name, value))


def m_header_dup_bad(r: Req, rng: random.Random) -> None:
    r.drop_header(b"webhook-signature")
    r.headers += [(b"webhook-signature", b"v1," + _b64(rng)) for _ in range(rng.randrange(2, 5))]


def m_header_ctl(r: Req, rng: random.Random) -> None:
    msg_id = r.header(b"webhook-id") or b""
    r.set_header(
        b"webhook-id", msg_id + rng.choice([b"\n\tx", b"\r", b"\x00", b"\r\n x", b"\x7f", b"\x0b"])
    )
    r.terminal = True


def m_header_name_bad(r: Req, rng: random.Random) -> None:
    r.headers.append((rng.choice([b"x h", "é".encode(), b"x\x00", b"", b"x:y"]), b"1"))
    r.terminal = True


def m_request_id_weird(r: Req, rng: random.Random) -> None:
    r.headers.append((b"x-request-id", rng.choice([b"ok-1", b"x" * 500, b"\xff\xfe", b"a b"])))


def m_connection_close(r: Req, rng: random.Random) -> None:
    r.headers.append((b"connection", b"close"))
    r.terminal = True


def m_http10(r: Req, rng: random.Random) -> None:
    if r.version != b"HTTP/1.1":
        return  # never undo a breaking mutation
    r.version = b"HTTP/1.0"
    r.terminal = True


def m_expect_continue(r: Req, rng: random.Random) -> None:
    r.headers.append((b"expect", b"100-continue"))


def m_version_bad(r: Req, rng: random.Random) -> None:
    r.version = rng.choice([b"HTTP/2.0", b"HTTP/9.9", b"HTTPS/1.1", b"HTTP/1.1x"])
    r.terminal = True


def m_garbage(r: Req, rng: random.Random) -> None:
    r.raw = rng.randbytes(rng.randrange(1, 2000))
    r.terminal = True
    r.half_close = True


def m_half_close_complete(r: Req, rng: random.Random) -> None:
    r.terminal = True
    r.half_close = True


# (name, must not be accepted, weight, mutation)
MUTATIONS: list[tuple[str, bool, int, Mutation]] = [
    ("sig_wrong", True, 4, m_sig_wrong),
    ("sig_truncated", True, 3, m_sig_truncated),
    ("sig_many_garbage", True, 2, m_sig_many_garbage),
    ("sig_many_with_valid", False, 2, m_sig_many_with_valid),
    ("sig_other_body", True, 3, m_sig_other_body),
    ("sig_wrong_key", True, 2, m_sig_wrong_key),
    ("drop_auth_header", True, 3, m_drop_auth_header),
    ("ts_bad", True, 5, m_ts_bad),
    ("id_changed", True, 3, m_id_changed),
    ("id_latin1", True, 2, m_id_latin1),
    ("id_long", True, 1, m_id_long),
    ("content_type", True, 2, m_content_type),
    ("content_type_ok", False, 2, m_content_type_ok),
    ("path", True, 4, m_path),
    ("path_ok", False, 2, m_path_ok),
    ("method", True, 3, m_method),
    ("method_garbage", True, 2, m_method_garbage),
    ("body_changed", True, 3, m_body_changed),
    ("body_not_json_signed", True, 2, m_body_empty_signed),
    ("body_over_limit", True, 2, m_body_over_limit),
    ("declared_over_limit", True, 2, m_declared_over_limit),
    ("length_mismatch", True, 2, m_length_mismatch),
    ("length_garbage", True, 2, m_length_garbage),
    ("chunked_bad", True, 3, m_chunked_bad),
    ("trailer_signature_only", True, 3, m_trailer_signature_only),
    ("trailer_auth_only", True, 2, m_trailer_auth_only),
    ("trailer_harmless", False, 3, m_trailer_harmless),
    ("chunked_ok", False, 2, m_chunked_ok),
    ("header_huge", True, 2, m_header_huge),
    ("header_big_ok", False, 2, m_header_big_ok),
    ("header_nonascii_ok", False, 2, m_header_nonascii_ok),
    ("header_many_ok", False, 1, m_header_many_ok),
    ("header_dup_same", False, 2, m_header_dup_same),
    ("header_dup_bad", True, 2, m_header_dup_bad),
    ("header_ctl", True, 2, m_header_ctl),
    ("header_name_bad", False, 2, m_header_name_bad),  # an extra header, or a 400
    ("request_id_weird", False, 1, m_request_id_weird),
    ("connection_close", False, 1, m_connection_close),
    ("http10", False, 1, m_http10),
    ("expect_continue", False, 1, m_expect_continue),
    ("version_bad", False, 1, m_version_bad),  # the signature holds: a 202, or a 400
    ("garbage", True, 1, m_garbage),
    ("half_close_complete", False, 1, m_half_close_complete),
]
_WEIGHTS = [weight for _, _, weight, _ in MUTATIONS]

# Mutations that rewrite the framing (raw) must come last: later ones would not show.
_RAW = {"declared_over_limit", "length_mismatch", "length_garbage", "chunked_bad", "garbage"}


def build(rng: random.Random, n: int, seed: int) -> Req:
    r = signed_request(rng, n, seed)
    count = rng.choices([0, 1, 2, 3], weights=[30, 45, 18, 7])[0]
    chosen = rng.choices(MUTATIONS, weights=_WEIGHTS, k=count)
    chosen.sort(key=lambda item: item[0] in _RAW)
    for name, breaks, _, mutate in chosen:
        if r.raw is not None:
            break
        mutate(r, rng)
        r.mutations.append(name)
        if breaks:
            r.valid = False
    return r


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def read_answer(reader: asyncio.StreamReader, head_request: bool) -> Answer | None:
    """One final response (1xx skipped), fully parsed; None at EOF before its first byte."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", f"truncated response head {exc.partial[:200]!r}"
            return None
        except ConnectionResetError:
            return None  # as above
        status_line, *lines = head[:-4].split(b"\r\n")
        version, code, *_ = status_line.split(b" ", 2)
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        status = int(code)
        headers = {}
        for line in lines:
            name, sep, value = line.partition(b":")
            assert sep, f"unparseable header line {line!r}"
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        if head_request:
            return Answer(status, headers, b"")
        assert b"content-length" in headers, f"no content-length: {head!r}"
        try:
            body = await reader.readexactly(int(headers[b"content-length"]))
        except ConnectionResetError:
            # The server closed with our unread bytes in its buffer (a refused body): the
            # kernel's RST may cut its answer short. Counted as unanswered.
            return None
        return Answer(status, headers, body)


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    sent: int = 0
    answered: int = 0
    valid_sent: int = 0
    unanswered: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, request: Req, answer: Answer) -> None:
        self.answered += 1
        self.statuses[answer.status] += 1
        where = f"request {request.n} {request.mutations}: {answer.status} {answer.body[:120]!r}"
        if answer.status >= 500:
            self.failures.append("5xx: " + where)
        if 200 <= answer.status < 300 and not request.valid:
            self.failures.append("2xx without a valid signature: " + where)
        json_answer = answer.headers.get(b"content-type", b"").startswith(b"application/json")
        if json_answer and request.method != b"HEAD":
            orjson.loads(answer.body)  # JSON answers parse


async def connection(queue: collections.deque[Req], port: int, tally: Tally) -> None:
    """Take requests from ``queue``: keep-alive batches (pipelined when more than one), a
    terminal request last on its connection."""
    while queue:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            open_ = True
            while open_ and queue:
                batch: list[Req] = []
                size = random.choice([1, 1, 1, 2, 3, 5])
                while queue and len(batch) < size:
                    request = queue.popleft()
                    batch.append(request)
                    if request.terminal:
                        break
                with contextlib.suppress(ConnectionError):
                    writer.write(b"".join(request.encode() for request in batch))
                    if batch[-1].half_close and writer.can_write_eof():
                        writer.write_eof()
                    await writer.drain()
                tally.sent += len(batch)
                tally.valid_sent += sum(request.valid for request in batch)
                for index, request in enumerate(batch):
                    answer = await read_answer(reader, request.method == b"HEAD")
                    if answer is None:
                        open_ = False
                        # Only a batch ending with a terminal request may lose answers: uvicorn
                        # closes a connection at a parse error or at the client's EOF, with
                        # the pipelined requests still on it.
                        assert batch[-1].terminal, (
                            f"no answer to request {request.n} {request.mutations} in batch"
                            f" {[(b.n, b.mutations) for b in batch]}"
                        )
                        tally.unanswered += len(batch) - index
                        break
                    tally.check(request, answer)
                    if answer.headers.get(b"connection") == b"close":
                        open_ = False  # said so (413, 431, a 400 of uvicorn's): no more answers
                        tally.unanswered += len(batch) - index - 1
                        break
                if batch[-1].terminal:
                    if open_ and batch[-1].leftover:
                        # What the connection says of the leftover bytes, read as a request,
                        # once our EOF tells the server nothing more comes.
                        with contextlib.suppress(ConnectionError):
                            if writer.can_write_eof():
                                writer.write_eof()
                    while open_ and batch[-1].leftover:
                        extra = await read_answer(reader, False)
                        if extra is None:
                            break
                        tally.statuses[extra.status] += 1
                        if extra.status >= 500 or 200 <= extra.status < 300:
                            tally.failures.append(f"leftover answered {extra.status}")
                    open_ = False
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def valid_webhook_accepted(port: int) -> bool:
    request = signed_request(random.Random(), 0, int(time.time_ns()))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        answer = await http.post(PATH.decode(), content=request.body, headers=request.headers)
    return answer.status_code == 202


async def test_fuzzed_requests_never_get_5xx_nor_unsigned_2xx(
    redis_url: str, tmp_path: Path
) -> None:
    """≥10,000 mutated raw requests to `kartahook serve`: 0 answers ≥500, 0 unsigned 2xx."""
    seed = int(os.environ.get("KARTAHOOK_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"fuzz seed: {seed} (KARTAHOOK_FUZZ_SEED={seed} replays it)")
    rng = random.Random(seed)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f'sources:\n  kartapay: {{secrets: ["{SECRET}"]}}\n')
    port = free_port()
    log = tmp_path / "serve.log"
    process = start_kartahook(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--grace-period", "1"],
        {
            "KARTAHOOK_REDIS_URL": redis_url,
            "KARTAHOOK_SOURCES_FILE": str(sources),
            "KARTAHOOK_MAX_BODY_BYTES": str(MAX_BODY),
            "KARTAHOOK_HEADER_TIMEOUT_S": "5",
            # Redis is up: on two shared, busy cores a 0.5 s write deadline can still pass.
            "KARTAHOOK_REDIS_TIMEOUT_S": "10",
            "KARTAHOOK_LOG_LEVEL": "WARNING",
        },
        log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient() as http:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
            assert time.monotonic() < deadline, "kartahook serve did not start"
            await asyncio.sleep(0.1)

        queue = collections.deque(build(rng, n, seed) for n in range(REQUESTS))
        tally = Tally()
        random.seed(seed)  # batch sizes
        await asyncio.gather(*(connection(queue, port, tally) for _ in range(CONNECTIONS)))
        print(
            f"sent {tally.sent} ({tally.valid_sent} valid), answered {tally.answered}, "
            f"unanswered {tally.unanswered}; statuses {sorted(tally.statuses.items())}"
        )
        assert tally.sent >= 10_000
        assert not tally.failures, tally.failures[:20]
        assert tally.statuses[500] == tally.statuses[503] == 0
        assert tally.statuses[202] > 1000 and tally.statuses[431] and tally.statuses[413]
        assert process.poll() is None, "kartahook serve died"
        assert await valid_webhook_accepted(port)
        text = log.read_text()
        assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
    finally:
        process.terminate()
        await exit_code(process, 15)
