"""``GET /metrics``: the service's own metrics plus the pipeline's state read from Redis at scrape
time (queue depth, dead letters, subscriber state), so every replica reports the same truth
without any process having to keep gauges up to date."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from service.metrics import render_latest
from service.settings import Settings
from service.store.status import snapshot


def _state_registry(state: dict[str, object]) -> CollectorRegistry:
    registry = CollectorRegistry()
    backlog = Gauge("kartahook_queue_jobs", "Jobs in the arq queue.", ["state"], registry=registry)
    oldest = Gauge(
        "kartahook_queue_oldest_ready_seconds", "Age of the oldest ready job.", registry=registry
    )
    dead = Gauge(
        "kartahook_dead_letters", "Dead letters waiting, by kind.", ["kind"], registry=registry
    )
    subscriber = Gauge(
        "kartahook_subscriber_up",
        "1 when the subscriber is enabled and its breaker closed.",
        ["subscriber"],
        registry=registry,
    )
    waiting = Gauge(
        "kartahook_subscriber_waiting",
        "Deliveries parked for a subscriber (cap, breaker, disabled).",
        ["subscriber"],
        registry=registry,
    )
    payments = Gauge(
        "kartahook_payments",
        "Payments scheduled for a convergence check (converging), and found not terminal at the"
        " horizon (stuck: GET /admin/payments/stuck).",
        ["state"],
        registry=registry,
    )
    tracked = state["payments"]
    assert isinstance(tracked, dict)
    for kind, count in tracked.items():
        payments.labels(kind).set(count)
    queue = state["backlog"]
    assert isinstance(queue, dict)
    backlog.labels("ready").set(queue["ready"])
    backlog.labels("deferred").set(queue["deferred"])
    oldest.set(queue["oldest_ready_age_s"])
    letters = state["dead_letters"]
    assert isinstance(letters, dict)
    for kind, count in letters.items():
        dead.labels(kind).set(count)
    subscribers = state["subscribers"]
    assert isinstance(subscribers, list)
    for sub in subscribers:
        up = sub["enabled"] and sub["breaker"] == "closed"
        subscriber.labels(sub["id"]).set(1 if up else 0)
        waiting.labels(sub["id"]).set(sub["waiting"])
    return registry


async def metrics_endpoint(request: Request) -> Response:
    """The service's metrics, then the pipeline's state (omitted when Redis does not answer)."""
    body, content_type = render_latest()
    settings: Settings = request.state.settings
    try:
        state = await snapshot(request.state.redis, settings.queue_name)
    except RedisError:
        return Response(body, media_type=content_type)
    return Response(body + generate_latest(_state_registry(state)), media_type=content_type)
