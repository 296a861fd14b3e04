"""Delivery HTTP client benchmark: delivery's ``post_once`` on the aiohttp transport and on
httpx's own pool, and raw aiohttp.

``python -m bench.delivery_client [--requests N] [--concurrency C]``: starts a fast receiver
(uvicorn + httptools, its own process) on 127.0.0.1, sends N signed-size JSON POSTs with C in
flight through each client, and prints requests/s and the httpx/aiohttp ratio. Both clients keep
every pooled connection alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx

from service.settings import Settings
from service.store.server import free_port
from workers.delivery.client import build_transport, post_once

BODY = (
    b'{"id":"msg_x","type":"payment.captured","data":{"id":"p","amount":1000,"pad":"'
    + (b"x" * 700)
    + b'"}}'
)
HEADERS = {"content-type": "application/json", "webhook-id": "msg_x"}


async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fastest honest subscriber: read the body, answer 204."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def serve_receiver() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "bench.delivery_client:receiver",
            "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
            "--log-level", "warning", "--no-access-log",
        ],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/hook"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.post(url, content=b"{}", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the receiver did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def _drive(send_one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    remaining = requests

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send_one()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def bench_delivery(url: str, requests: int, concurrency: int, transport: str) -> float:
    settings = Settings(delivery_max_connections=concurrency, delivery_http_transport=transport)
    target = httpx.URL(url)
    async with build_transport(settings) as pool:

        async def send_one() -> None:
            result = await post_once(pool, target, HEADERS, BODY, 10.0)
            assert result.status == 204, result

        await _drive(send_one, min(requests, 200), concurrency)  # warm the pool
        return await _drive(send_one, requests, concurrency)


async def bench_aiohttp(url: str, requests: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send_one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                assert response.status == 204

        await _drive(send_one, min(requests, 200), concurrency)
        return await _drive(send_one, requests, concurrency)


async def run(requests: int, concurrency: int, rounds: int) -> dict[str, float]:
    with serve_receiver() as url:
        best = {"delivery client": 0.0, "httpx default pool": 0.0, "raw aiohttp": 0.0}
        for _ in range(rounds):
            for name, rate in (
                ("delivery client", await bench_delivery(url, requests, concurrency, "aiohttp")),
                ("httpx default pool", await bench_delivery(url, requests, concurrency, "httpx")),
                ("raw aiohttp", await bench_aiohttp(url, requests, concurrency)),
            ):
                best[name] = max(best[name], rate)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    best = asyncio.run(run(args.requests, args.concurrency, args.rounds))
    raw = best["raw aiohttp"]
    print(
        f"delivery client: {args.requests} POSTs, {args.concurrency} in flight, "
        f"best of {args.rounds} rounds"
    )
    for name, rate in best.items():
        print(f"  {name:<40} {rate:8.0f} req/s   {rate / raw:5.2f} x raw aiohttp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
