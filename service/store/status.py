"""A snapshot of the pipeline's state, read from Redis: backlog, dead letters, payments under
convergence and stuck, subscriber health, worker heartbeats. Used by ``kartahook status`` (and
anyone scripting against it) and the service's ``/metrics``."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from service.clock import now_ms
from service.store.dead_letters import EventDeadLetters
from service.store.deliveries import DeliveryAdmin
from service.store.layout import (
    CONVERGE,
    STUCK,
    breaker_key,
    health_check_key,
    inflight_key,
    waiting_key,
)
from service.store.subscribers import SubscriberStore


async def snapshot(redis: aioredis.Redis, queue_name: str) -> dict[str, Any]:
    """The state as plain JSON-able data."""
    now = now_ms()
    ready = int(await redis.zcount(queue_name, "-inf", now))
    total = int(await redis.zcard(queue_name))
    oldest = await redis.zrange(queue_name, 0, 0, withscores=True)
    deliveries = DeliveryAdmin(redis, queue_name)
    subscribers = []
    for sub in await SubscriberStore(redis).all():
        breaker: dict[bytes, bytes] = await redis.hgetall(breaker_key(sub.id))  # type: ignore[misc]
        open_until = int(breaker.get(b"open_until", b"0") or 0)
        subscribers.append(
            {
                "id": sub.id,
                "enabled": sub.enabled,
                "disabled_reason": sub.disabled_reason,
                "breaker": "open" if open_until > now else "closed",
                "consecutive_failures": int(breaker.get(b"fails", b"0") or 0),
                "waiting": int(await redis.zcard(waiting_key(sub.id))),
                "in_flight": int(await redis.zcard(inflight_key(sub.id))),
                "dead_letters": await deliveries.dead_letter_count(sub.id),
            }
        )
    health = await redis.get(health_check_key(queue_name))
    return {
        "backlog": {
            "ready": ready,
            "deferred": total - ready,
            "oldest_ready_age_s": (
                round((now - oldest[0][1]) / 1000, 3) if oldest and ready else 0.0
            ),
        },
        "dead_letters": {
            "events": await EventDeadLetters(redis, queue_name).count(),
            "deliveries": await deliveries.dead_letter_count(),
        },
        "payments": {
            "converging": int(await redis.zcard(CONVERGE)),
            "stuck": int(await redis.zcard(STUCK)),
        },
        "subscribers": subscribers,
        "worker_health": health.decode() if health else None,
    }
