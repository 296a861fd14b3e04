"""Compression of what Redis keeps (issue 14): zlib vs zstd, with and without a dictionary,
measured on the sandbox's real bodies.

``python -m bench.compression [--payments N] [--train-dict PATH]``:

1. A stack with no worker (:class:`kartahook.stack.Stack`, ``workers=0``, the sandbox sending
   its own signed KartaPay webhooks): ``--payments`` payments are created and driven to
   ``completed``. The samples are (a) every raw record the service archived (what
   ``store_event.lua`` keeps per webhook, before compression) and (b) the delivery body of
   every transition each payment shows (``workers.delivery.message.delivery_body`` of the
   payment as ``GET /v1/payments/{id}`` returns it: what a delivery sends).
2. The samples are split in two halves by payment: the first trains the dictionaries, the
   second is measured (so the dictionary is never measured on the bodies it was trained on).
3. For each codec and level: mean compressed size, ratio, and µs per compress and per
   decompress (mean over every sample of the measured half, best of 3 rounds).

``--train-dict PATH`` writes a dictionary trained on every sample (both halves) to ``PATH``:
how the dictionary shipped in ``service/store/zdict/`` was made. Its samples are made neutral
first (:func:`neutral`): every time and port in them is replaced by a random one, so the
dictionary holds the bodies' structure and constants, not today's date or this run's ports
(a dictionary that does compresses the same bodies a day later ~10 % worse).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import orjson

from bench.e2e import TOKEN, child_env, completed_payments

DICT_SIZE = 16 * 1024


async def collect(payments: int) -> tuple[list[bytes], list[bytes]]:
    """(raw records, delivery bodies) of ``payments`` payments through a stack with no worker,
    each list ordered by payment."""
    from kartahook import stack as builder
    from service.domain.events import Transition
    from service.domain.lifecycle import steps_after
    from service.store import compression
    from service.store.client import redis_client
    from service.store.layout import EVENT, prefix
    from workers.delivery.message import delivery_body

    workdir = Path(tempfile.mkdtemp(prefix="kartahook-compression-bench-"))
    stack = builder.Stack(
        workdir,
        subscribers=[],
        token=TOKEN,
        base_env=child_env({}),
        sandbox_args=("--step-delay", "0.01"),
        workers=0,
    )
    raws: list[bytes] = []
    bodies: list[bytes] = []
    try:
        async with stack, httpx.AsyncClient(timeout=30) as http:
            ids = await completed_payments(stack.sandbox_url, payments)
            redis = redis_client(stack.redis_url)
            try:
                expected = payments * 5
                values: list[bytes] = []
                for _ in range(600):
                    # One event hash per payment, a field (its raw record) per event.
                    keys = [k async for k in redis.scan_iter(match=prefix(EVENT) + "*")]
                    values = [v for key in keys for v in await redis.hvals(key)]  # type: ignore[misc]
                    if len(values) >= expected:
                        break
                    await asyncio.sleep(0.1)
                for value in values:
                    raws.append(compression.decompress(value))
            finally:
                await redis.aclose()
            raws.sort(key=payment_of)
            for n, payment_id in enumerate(ids):
                got = await http.get(
                    f"{stack.sandbox_url}/v1/payments/{payment_id}",
                    headers={"authorization": f"Bearer {TOKEN}"},
                )
                payment = got.json()
                for step in steps_after(payment, -1):
                    transition = Transition(
                        payment_id=payment_id,
                        status=step.status,
                        seq=step.seq,
                        occurred_at=step.occurred_at,
                        source="kartapay",
                        event_id=f"evt_{n}",
                        received_at_ms=int(time.time() * 1000),
                        payment=payment,
                    )
                    bodies.append(delivery_body(transition))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return raws, bodies


_ISO_TIME = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_EPOCH = re.compile(rb"(?<!\d)1\d{9}(\d{3})?(?!\d)")
_PORT = re.compile(rb"(127\.0\.0\.1|localhost):\d{2,5}")


def neutral(sample: bytes, rng: random.Random) -> bytes:
    """``sample`` with its ISO times, epoch seconds or ms and local ports replaced by random
    ones (the same length)."""

    def iso(match: re.Match[bytes]) -> bytes:
        at = time.gmtime(rng.randrange(1_700_000_000, 1_900_000_000))
        millis = b".%03d" % rng.randrange(1000) if match.group(1) else b""
        return time.strftime("%Y-%m-%dT%H:%M:%S", at).encode() + millis + b"Z"

    def epoch(match: re.Match[bytes]) -> bytes:
        return b"%d" % rng.randrange(
            10 ** (len(match.group(0)) - 1), 2 * 10 ** (len(match.group(0)) - 1)
        )

    def port(match: re.Match[bytes]) -> bytes:
        return match.group(1) + b":%d" % rng.randrange(1024, 65536)

    return _PORT.sub(port, _EPOCH.sub(epoch, _ISO_TIME.sub(iso, sample)))


def payment_of(raw: bytes) -> str:
    """The payment id in a raw record's body (the samples are split by payment)."""
    try:
        return str(orjson.loads(orjson.loads(raw)["body"])["data"]["id"])
    except (KeyError, ValueError, TypeError):
        return ""


def timed(fn: Callable[[bytes], bytes], samples: Sequence[bytes]) -> tuple[list[bytes], float]:
    """(outputs, best-of-3 mean µs per call)."""
    best = float("inf")
    out: list[bytes] = []
    for _ in range(3):
        started = time.perf_counter()
        out = [fn(s) for s in samples]
        best = min(best, (time.perf_counter() - started) / len(samples) * 1e6)
    return out, best


def measure(name: str, samples: Sequence[bytes], train: Sequence[bytes]) -> list[str]:
    import zstandard

    plain = statistics.mean(len(s) for s in samples)
    rows = [
        f"{name}: {len(samples)} samples, mean {plain:,.0f} B",
        "",
        "| codec | mean size | ratio | compress µs | decompress µs |",
        "|---|---|---|---|---|",
    ]
    zdict = zstandard.train_dictionary(DICT_SIZE, list(train))
    codecs: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = []
    for level in (1, 6):
        codecs.append(
            (f"zlib level {level}", lambda b, lv=level: zlib.compress(b, lv), zlib.decompress)
        )
    for level in (1, 3):
        c = zstandard.ZstdCompressor(level=level)
        d = zstandard.ZstdDecompressor()
        codecs.append((f"zstd level {level}", c.compress, d.decompress))
    for level in (1, 3, 6):
        c = zstandard.ZstdCompressor(level=level, dict_data=zdict, write_content_size=True)
        d = zstandard.ZstdDecompressor(dict_data=zdict)
        codecs.append((f"zstd level {level} + 16 KiB dictionary", c.compress, d.decompress))
    # What the service does: the shipped dictionary, trained on another run's bodies (other ports,
    # ids, times), so this measures it as production would meet new payments.
    from service.store import compression

    codecs.append(
        (
            f"service.store.compression (level {compression.LEVEL}, shipped dictionary)",
            compression.compress,
            compression.decompress,
        )
    )
    for label, compress, decompress in codecs:
        packed, c_us = timed(compress, samples)
        unpacked, d_us = timed(decompress, packed)
        assert unpacked == list(samples)
        size = statistics.mean(len(p) for p in packed)
        rows.append(f"| {label} | {size:,.0f} B | {plain / size:.1f}x | {c_us:.1f} | {d_us:.1f} |")
    return [*rows, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__)
    parser.add_argument("--payments", type=int, default=400)
    parser.add_argument("--train-dict", type=Path, help="write a dictionary trained on all")
    args = parser.parse_args(argv)
    raws, bodies = asyncio.run(collect(args.payments))
    if args.train_dict:
        import zstandard

        from service.store.compression import DICT_ID

        rng = random.Random(14)
        samples = [neutral(s, rng) for s in raws + bodies]
        zdict = zstandard.train_dictionary(DICT_SIZE, samples, dict_id=DICT_ID)
        args.train_dict.write_bytes(zdict.as_bytes())
        print(f"dictionary {DICT_ID} ({len(zdict.as_bytes())} B) -> {args.train_dict}")
    lines = []
    for name, samples in (("raw records", raws), ("delivery bodies", bodies)):
        half = len(samples) // 2
        lines += measure(name, samples[half:], samples[:half])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
