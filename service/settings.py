"""Settings for every kartahook process, read from ``KARTAHOOK_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from arq.constants import default_queue_name
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.store.layout import OPERATOR_TTL_S

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """One settings object, built once per process and handed to whoever needs it."""

    model_config = SettingsConfigDict(env_prefix="KARTAHOOK_", extra="ignore")

    # Infrastructure
    redis_url: str | None = None
    redis_timeout_s: float = Field(0.5, gt=0, description="Deadline for one Redis write.")
    # The admin API, the console and /metrics read history with scans and long lists: their own
    # client, with a longer deadline than ingestion's writes (docs/operations.md).
    admin_redis_timeout_s: float = Field(
        5.0, gt=0, description="Deadline for one Redis call of the admin API and /metrics."
    )
    # Behind Sentinel: a webhook is acknowledged only once this many replicas have it (WAIT).
    redis_min_replicas: int = Field(0, ge=0, description="Replicas that must have a write; 0: off.")
    redis_wait_timeout_ms: int = Field(
        300, gt=0, description="WAIT's timeout; kept below redis_timeout_s."
    )

    # KartaPay REST API
    kartapay_url: str = "http://127.0.0.1:8081"
    kartapay_token: SecretStr = SecretStr("sandbox-token")
    kartapay_language: str = "en-US"
    kartapay_timeout_s: float = Field(5.0, gt=0)

    # Files
    sources_file: Path | None = None
    subscribers_file: Path | None = None

    # Admin listener (``kartahook serve``): /admin/…, /metrics and the probes
    admin_token: SecretStr | None = None
    admin_port: int = Field(8090, ge=1, le=65535, description="Port of the admin listener.")
    admin_host: str | None = Field(None, description="Its address; unset: that of --host.")

    # Logging
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    # Ingestion
    max_body_bytes: int = Field(256 * 1024, gt=0)
    # One field per event of its payment's event hash holds the dedupe marker and the
    # compressed raw record: the hash lives the longer of the two after the payment's latest new
    # event, so an event is remembered at least this long after it, and this long after its
    # payment's latest webhook (docs/ingestion.md, docs/decisions/event-hash.md).
    dedupe_ttl_s: int = Field(72 * 3600, ge=72 * 3600)
    raw_ttl_s: int = Field(72 * 3600, gt=0)
    trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.1"])
    retry_after_s: int = Field(5, gt=0)
    # 0 (default): /readyz checks Redis only. A large backlog is a metric and an alert (every
    # replica sees the same backlog, so failing readiness on it empties the load balancer).
    backlog_high_water: int = Field(0, ge=0, description="/readyz fails at this backlog; 0: off.")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Header block (request target and fields); over: 431."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="From a connection's or request's first byte to its headers' end."
    )
    max_connections: int = Field(1000, ge=1, description="Open HTTP connections; over: closed.")

    # Queue
    queue_name: str = default_queue_name  # arq's own, from arq.constants

    # Processing (workers)
    worker_max_jobs: int = Field(200, gt=0, description="Jobs one worker process runs at once.")
    worker_poll_delay_s: float = Field(0.01, gt=0, description="Queue poll interval.")
    worker_health_check_s: int = Field(15, ge=10, le=30)
    worker_job_timeout_s: int = Field(60, gt=0, description="arq kills a job after this.")
    worker_drain_s: int = Field(25, ge=0, description="SIGTERM grace for jobs in flight.")
    worker_lease_s: float = Field(
        5.0,
        ge=0.5,
        description="Lease on a running job, a fetch lock and a delivery slot, renewed every "
        "third of it while the work runs: a dead worker's hold lapses after this.",
    )
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(
        None, description="Serve /healthz, /readyz and /metrics on this port."
    )
    process_timeout_s: float = Field(30.0, gt=0, description="Deadline of one processing run.")
    process_backoff_base_s: float = Field(1.0, gt=0)
    process_backoff_cap_s: float = Field(300.0, gt=0)
    process_max_age_s: float = Field(24 * 3600.0, gt=0, description="Then dead-lettered.")
    process_not_found_tries: int = Field(5, gt=0, description="404s before dead-lettering.")
    process_not_found_delay_s: float = Field(5.0, gt=0, description="First 404 retry delay.")

    # Convergence: non-terminal payments fetched again on a schedule (docs/processing.md)
    converge_schedule_s: CommaList = Field(
        default_factory=lambda: ["60", "300", "1800", "7200", "21600"],
        description="Delays between the checks of a non-terminal payment, in turn.",
    )
    converge_repeat_s: float = Field(86_400, gt=0, description="After the schedule: every…")
    converge_horizon_s: float = Field(259_200, gt=0, description="…until this much passed.")
    converge_poll_s: float = Field(5.0, gt=0, description="How often a worker queues due checks.")
    converge_batch: int = Field(500, ge=1, description="Checks queued per poll, at most.")
    converge_stuck_max: int = Field(10_000, ge=1, description="Stuck payments kept, at most.")

    # Delivery
    subscriber_allowlist: CommaList = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128", "localhost"]
    )
    delivery_timeout_s: float = Field(10.0, gt=0)
    delivery_retry_schedule_s: CommaList = Field(
        default_factory=lambda: ["5", "30", "120", "600", "1800", "3600", "7200", "14400", "28800"]
    )
    delivery_retry_repeat_s: float = Field(43_200, ge=0, description="After the schedule: every…")
    delivery_retry_horizon_s: float = Field(259_200, ge=0, description="…until this much passed.")
    delivery_jitter: float = Field(0.2, ge=0, lt=1)
    delivery_retry_after_max_s: float = Field(43_200, ge=0)
    delivery_concurrency: int = Field(4, ge=1, description="Default per-subscriber cap.")
    delivery_max_connections: int = Field(200, ge=1)
    delivery_http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    delivery_breaker_failures: int = Field(5, ge=1)
    delivery_breaker_cooldown_s: float = Field(60.0, gt=0)
    delivery_attempt_log_size: int = Field(500, ge=1)
    # How long a finished delivery's record (history, replay; service.store.records) is kept.
    delivery_done_ttl_s: int = Field(7 * 24 * 3600, gt=0)
    # What an operator must act on (delivery and event dead letters, stuck payments) is kept
    # this long, then dropped (metrics: kartahook_dead_letters, kartahook_payments_stuck).
    operator_ttl_s: int = Field(OPERATOR_TTL_S, gt=0)

    # History (admin API and console): written by the processing job (docs/operations.md)
    history_ttl_s: int = Field(
        7 * 24 * 3600, gt=0, description="How long a payment's timeline is kept after its last run."
    )
    history_timeline_max: int = Field(64, ge=1, description="Processing runs kept per payment.")
    history_index_max: int = Field(
        200_000, ge=1, description="Payments the events and deliveries lists can walk, at most."
    )

    @property
    def lease_ms(self) -> int:
        """:attr:`worker_lease_s` in milliseconds: how long a worker's hold on a job (arq's
        in-progress key), a fetch lock or a delivery slot lasts unless its heartbeat renews it
        (``service.store.leases``)."""
        return int(self.worker_lease_s * 1000)

    @property
    def lease_renew_s(self) -> float:
        """How often a worker's heartbeat renews its leases: a third of a lease, so two
        renewals may fail before a live worker's hold lapses."""
        return self.worker_lease_s / 3

    @property
    def delivery_lease_ms(self) -> int:
        """How long a delivery attempt holds its in-flight slot (or probe) unless renewed
        (:attr:`lease_ms`): a dead worker's slots lapse after this."""
        return self.lease_ms

    @property
    def delivery_hold_ms(self) -> int:
        """How long the job of a delivery sent at once (its safety net) waits. Should the
        sender die, the job that was sending runs again once its lease lapses and makes the
        safety net due when the slot's lease ends (``FanoutStore.resume``); a live sender's
        heartbeat pushes a safety net due sooner back with its slot."""
        return int((self.delivery_timeout_s + 20) * 1000)

    @model_validator(mode="after")
    def _wait_within_write_deadline(self) -> Settings:
        if self.redis_min_replicas and self.redis_wait_timeout_ms >= self.redis_timeout_s * 1000:
            raise ValueError(
                "KARTAHOOK_REDIS_WAIT_TIMEOUT_MS must be below KARTAHOOK_REDIS_TIMEOUT_S "
                f"({self.redis_wait_timeout_ms} ms >= {self.redis_timeout_s * 1000:g} ms)"
            )
        return self

    @field_validator(
        "trusted_proxies",
        "subscriber_allowlist",
        "delivery_retry_schedule_s",
        "converge_schedule_s",
        mode="before",
    )
    @classmethod
    def _comma_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("converge_schedule_s")
    @classmethod
    def _positive_delays(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ok = float(item) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{item!r} is not a positive number of seconds")
        return value
