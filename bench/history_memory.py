"""What history costs in Redis per payment (issue 13's records, against issue 14's budget).

``python -m bench.history_memory [--payments N] [--runs R]`` starts a private redis-server and
writes, through :class:`service.store.history.HistoryStore` (as the processing job does), R runs
for each of N payments shaped as the sandbox's: a UUID payment id, KartaPay event ids
(``evt_`` + 24 hex), one run per webhook (init, submitted, approved, captured, completed by
default), each with its fetched status and the transition it recorded. The timeline is kept in
the payment's state hash: each payment's hash is first given what it holds at rest without
history (a final state and the records of 4 deliveries to each of 3 subscribers), then the runs
are written. It prints the growth of the state hashes' ``MEMORY USAGE`` and the payments list's
per payment, and ``used_memory``'s delta per payment.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from service.domain.events import EventHint
from service.store.history import HistoryStore, Run
from service.store.layout import HISTORY_PAYMENTS, payment_state_key, run_field
from service.store.server import RedisServer

WEBHOOK_STATUSES = ("init", "submitted", "approved", "captured", "completed")
BASE_MS = 1_800_000_000_000


async def measure(payments: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False).start()
        try:
            redis = aioredis.from_url(server.url)
            try:
                return await _measure(redis, payments, runs)
            finally:
                await redis.aclose()
        finally:
            server.stop()


async def _measure(redis: aioredis.Redis, payments: int, runs: int) -> dict[str, float]:
    store = HistoryStore(redis)
    ids = [str(uuid.uuid4()) for _ in range(payments)]
    for pid in ids:
        await redis.hset(payment_state_key(pid), mapping=AT_REST)  # type: ignore[misc]
        await redis.expire(payment_state_key(pid), 10 * 86_400)
    states_before = await _states(redis, ids)
    before = int((await redis.info("memory"))["used_memory"])
    statuses = (WEBHOOK_STATUSES * (runs // len(WEBHOOK_STATUSES) + 1))[:runs]
    for n, pid in enumerate(ids):
        for k, status in enumerate(statuses):
            received = BASE_MS + n * 1_000 + k * 200
            hint = EventHint("kartapay", "evt_" + secrets.token_hex(12), pid, received)
            emitted = () if status == "init" else (status,)
            run = Run(
                received, received + 35, "kartapay", hint.event_id, status, "processed", emitted
            )
            await store.record_run(hint, run, received + 40)
    after = int((await redis.info("memory"))["used_memory"])
    timelines = await _states(redis, ids) - states_before
    index = int(await redis.memory_usage(HISTORY_PAYMENTS, samples=0) or 0)
    fields = await redis.hmget(payment_state_key(ids[0]), ["h", *map(run_field, range(runs))])  # type: ignore[misc]
    return {
        "payments": payments,
        "runs_per_payment": runs,
        "timeline_field_bytes": sum(len(v or b"") for v in fields),
        "timelines_bytes_per_payment": timelines / payments,
        "index_bytes_per_payment": index / payments,
        "used_memory_delta_per_payment": (after - before) / payments,
    }


# A payment's state hash at rest without history: a final state and the records of its 4
# deliveries to each of 3 subscribers (service.store.records' shape).
AT_REST = {
    "seq": "5",
    "status": "completed",
    "t0": str(BASE_MS),
    **{
        f"{sub}:{seq}": f"d,1,200,{seq * 40},3"
        for sub in ("ledger", "crm", "analytics")
        for seq in range(2, 6)
    },
}


async def _states(redis: aioredis.Redis, ids: list[str]) -> int:
    """The sum of the state hashes' ``MEMORY USAGE``."""
    total = 0
    for pid in ids:
        total += int(await redis.memory_usage(payment_state_key(pid), samples=0) or 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=len(WEBHOOK_STATUSES))
    args = parser.parse_args()
    result = asyncio.run(measure(args.payments, args.runs))
    for name, value in result.items():
        print(f"{name:32} {value:10.1f}")


if __name__ == "__main__":
    main()
