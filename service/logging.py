"""structlog configuration: one pipeline for our loggers and for the stdlib ones (uvicorn, arq).

Call :func:`configure_logging` once per process. Context such as ``request_id``, ``event_id`` and
``payment_id`` is bound with ``structlog.contextvars`` and merged into every line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Keys whose values never reach a log line: secrets, signatures, credentials, payer data.
REDACTED_KEYS = frozenset(
    {
        "authorization",
        "secret",
        "secrets",
        "signature",
        "webhook-signature",
        "stripe-signature",
        "token",
        "password",
        "payer",
        "fullname",
        "email",
        "phone",
        "address",
    }
)
REDACTED = "[redacted]"


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the values of sensitive keys, at any depth of dicts, with a marker."""
    for key in list(event_dict):
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], dict):
            event_dict[key] = redact(None, "", dict(event_dict[key]))
    return event_dict


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Configure structlog and route the stdlib loggers (uvicorn, arq) through it."""
    renderer: structlog.types.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        # Not cached: structlog.testing.capture_logs must keep working after configuration.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "arq", "arq.worker", "arq.connections"):
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.handlers[:] = []
        stdlib_logger.propagate = True
    # The access log is replaced by our own one line per request.
    logging.getLogger("uvicorn.access").disabled = True
    # arq logs every job start with a repr of its arguments, which can hold payer data; our own
    # jobs log one line each instead, so only arq's warnings and errors are kept.
    logging.getLogger("arq.worker").setLevel(max(numeric_level, logging.WARNING))
    logging.getLogger("arq.jobs").setLevel(max(numeric_level, logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
