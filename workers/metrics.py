"""Prometheus metrics of the processing worker (served by ``kartahook worker`` when a metrics
port is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from service.store.redis_config import LOW_GAUGE_HELP, LOW_GAUGE_NAME

EVENTS_PROCESSED = Counter(
    "kartahook_events_processed_total",
    "process_event runs by outcome.",
    ["outcome"],
)
TRANSITIONS_EMITTED = Counter(
    "kartahook_transitions_emitted_total",
    "Transitions recorded, with their deliveries, by status.",
    ["status"],
)
DELIVERIES_CREATED = Counter(
    "kartahook_transition_deliveries_total",
    "Deliveries created with the transitions (one per transition and subscriber wanting it).",
    ["subscriber"],
)
FETCH_SECONDS = Histogram(
    "kartahook_kartapay_fetch_seconds",
    "Latency of GET /v1/payments/{id}.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KARTAPAY_AUTH_FAILURES = Counter(
    "kartahook_kartapay_auth_failures_total",
    "401/403 answers from the KartaPay API: the token needs attention.",
)
UNEXPECTED_ERRORS = Counter(
    "kartahook_worker_unexpected_errors_total",
    "Job runs that raised something unexpected (a bug, Redis down), by job; each is logged with"
    " its traceback and retried.",
    ["job"],
)
CONVERGENCE_TRANSITIONS = Counter(
    "kartahook_convergence_transitions_total",
    "Transitions found by a convergence check, not by a webhook (webhooks are being lost), by"
    " status.",
    ["status"],
)
CONVERGENCE_CHECKS = Counter(
    "kartahook_convergence_checks_total",
    "Convergence checks of non-terminal payments queued by this worker.",
)
PAYMENTS_STUCK = Counter(
    "kartahook_payments_stuck_total",
    "Payments found still not terminal at the convergence horizon (listed by"
    " GET /admin/payments/stuck).",
)
REDIS_SETTING_LOW = Gauge(
    LOW_GAUGE_NAME,
    LOW_GAUGE_HELP,
    ["setting"],
)
