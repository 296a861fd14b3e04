"""Prometheus metrics of fan-out, on the default registry that ``kartahook worker`` serves
(next to ``workers/metrics.py``; the API's ``service.metrics.REGISTRY`` is another process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86_400)

DELIVERIES = Counter(
    "kartahook_deliveries_total",
    "Delivery attempts by subscriber and outcome (delivered, retry, dead, gone, dropped).",
    ["subscriber", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "kartahook_delivery_seconds",
    "Duration of one delivery attempt (POST to the subscriber).",
    ["subscriber"],
    buckets=LATENCY_BUCKETS,
)
RECEIVED_TO_DELIVERED_SECONDS = Histogram(
    "kartahook_received_to_delivered_seconds",
    "From the webhook that revealed a transition being received to its successful delivery.",
    ["subscriber"],
    buckets=E2E_BUCKETS,
)
DEFERRED = Counter(
    "kartahook_delivery_deferred_total",
    "Delivery jobs parked instead of sent: cap, open, probing, disabled.",
    ["subscriber", "reason"],
)
WAKES = Counter(
    "kartahook_delivery_wakes_total",
    "Runs of subscribers' wake jobs (one per breaker cycle, or a recheck of parked deliveries)"
    " by what they found: probe (sent the half-open probe), probing, idle, open, released,"
    " disabled, removed.",
    ["subscriber", "outcome"],
)
DEAD_LETTERS = Gauge(
    "kartahook_delivery_dead_letters",
    "Delivery dead letters waiting for a replay (as last seen by this worker).",
)
SUBSCRIBER_STATE = Gauge(
    "kartahook_subscriber_state",
    "1 for the current state of each subscriber: enabled, disabled or paused (breaker open).",
    ["subscriber", "state"],
)
STATES = ("enabled", "disabled", "paused")


_last_state: dict[str, str] = {}


def set_subscriber_state(subscriber: str, state: str) -> None:
    """Set the gauge of ``subscriber`` to ``state`` (only a change touches the gauge: this runs
    after every delivery)."""
    if _last_state.get(subscriber) == state:
        return
    _last_state[subscriber] = state
    for name in STATES:
        SUBSCRIBER_STATE.labels(subscriber, name).set(1 if name == state else 0)
