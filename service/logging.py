"""structlog configuration: one pipeline for our loggers and for the stdlib ones (uvicorn, arq).

Call :func:`configure_logging` once per process. Context such as ``request_id``, ``event_id`` and
``payment_id`` is bound with ``structlog.contextvars`` and merged into every line.

The ingestion server writes one line per request, so the pipeline is kept cheap: loggers are
cached after first use, the timestamp is formatted once per second, redaction only copies when a
line has something to redact, lines are rendered to bytes by orjson, and
:class:`LineWriter` writes the lines of one event-loop turn in one ``write`` (a process that dies
loses at most the lines of the turn it died in; outside a running loop every line is written at
once). :func:`write_json_line` runs the same JSON pipeline without structlog's bound-logger call
chain, for the ingestion's request line.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import IO, Any

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


# Value types that never hold a nested dict to redact.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
# Keys seen before that are not sensitive in any letter case: most lines need no other check.
_SAFE_KEYS: set[str] = set()
_SAFE_KEYS_MAX = 4096


def _needs_redaction(event_dict: MutableMapping[str, Any]) -> bool:
    if not _SAFE_KEYS.issuperset(event_dict):
        for key in event_dict:
            if key.lower() in REDACTED_KEYS:
                return True
        if len(_SAFE_KEYS) < _SAFE_KEYS_MAX:
            _SAFE_KEYS.update(event_dict)
    return not _SCALAR_TYPES.issuperset(map(type, event_dict.values()))


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the values of sensitive keys, at any depth of dicts, with a marker.

    Nested dicts are copied before redaction, never changed in place. A line whose keys are all
    known to be safe and whose values are all scalars is returned as it is, after two set checks.
    """
    if not _needs_redaction(event_dict):
        return event_dict
    for key in list(event_dict):
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], dict):
            event_dict[key] = redact(None, "", dict(event_dict[key]))
    return event_dict


class UTCTimeStamper:
    """``timestamp``: ISO 8601 UTC with microseconds and ``Z`` (as structlog's
    ``TimeStamper(fmt="iso", utc=True)``), the date and time part formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def render_json_line(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """The final processor: one JSON line, as bytes, newline included."""
    return orjson.dumps(event_dict, default=str, option=orjson.OPT_APPEND_NEWLINE)


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class LineWriter:
    """A structlog logger writing whole lines to a stream (binary, or text without a buffer).

    In a running event loop the lines of one loop turn are joined and written (and flushed) by
    one callback scheduled at the end of the turn; elsewhere each line is written at once. Lines
    still pending at exit are written by an ``atexit`` hook.
    """

    def __init__(self, file: IO[str] | IO[bytes]) -> None:
        stream: Any = getattr(file, "buffer", file)
        self._stream = stream
        self._text = isinstance(stream, io.TextIOBase)
        self._pending: list[bytes] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str | bytes) -> None:
        line = message if isinstance(message, bytes) else (message + "\n").encode()
        with self._lock:
            pending = self._pending
            pending.append(line)
            scheduled = self._scheduled_on
            if len(pending) > 1 and scheduled is not None and not scheduled.is_closed():
                return  # the flush already scheduled writes it
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        with self._lock:
            if self._scheduled_on is loop or not self._pending:
                return
            self._scheduled_on = loop
        loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg

    def flush(self) -> None:
        """Write every pending line now."""
        with self._lock:
            lines, self._pending = self._pending, []
            self._scheduled_on = None
            if lines:
                data = lines[0] if len(lines) == 1 else b"".join(lines)
                self._stream.write(data.decode() if self._text else data)
                self._stream.flush()


_writers: dict[int, LineWriter] = {}


def line_writer(file: IO[str] | IO[bytes]) -> LineWriter:
    """The one :class:`LineWriter` of ``file`` (kept across reconfiguration)."""
    writer = _writers.get(id(file))
    if writer is None:
        writer = _writers[id(file)] = LineWriter(file)
    return writer


def format_exc_info(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog's ``format_exc_info``, called only for the lines that carry ``exc_info``."""
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, method_name, event_dict)
    return event_dict


# Method names as structlog's add_log_level sees them, and their levels.
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _JsonPipeline:
    """The JSON pipeline :func:`configure_logging` installed: the configured processor list, a
    copy of it (to notice ``capture_logs`` or a reconfiguration), the level and the writer."""

    __slots__ = ("installed", "level", "processors", "writer")

    def __init__(
        self, processors: list[structlog.types.Processor], level: int, writer: LineWriter
    ) -> None:
        self.processors = processors
        self.installed = list(processors)
        self.level = level
        self.writer = writer


_json_pipeline: _JsonPipeline | None = None


def write_json_line(method_name: str, event: str, fields: dict[str, Any]) -> bool:
    """Log ``event`` with ``fields`` as ``structlog.get_logger().<method_name>(event, **fields)``
    would under the JSON pipeline of :func:`configure_logging`: the same processors (bound
    context, level, timestamp, redaction, one orjson line) and the same writer, without the
    bound logger's call chain. ``fields`` is used as the line, and changed.

    Returns False, writing nothing, when that pipeline is not in force (console format, logging
    not configured, or ``structlog.testing.capture_logs`` active): the caller logs through
    structlog instead.
    """
    pipeline = _json_pipeline
    if pipeline is None or pipeline.processors != pipeline.installed:
        return False
    if _LEVELS[method_name] < pipeline.level:
        return True
    fields["event"] = event
    line: Any = fields
    for processor in pipeline.processors:
        line = processor(None, method_name, line)
    pipeline.writer.msg(line)
    return True


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UTCTimeStamper(),
        redact,
    ]


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Configure structlog and route the stdlib loggers (uvicorn, arq) through it.

    Loggers are cached on first use. Reconfiguring updates the processor list in place, so
    cached loggers and ``structlog.testing.capture_logs`` see the new processors.
    """
    global _json_pipeline
    renderer: structlog.types.Processor
    line_renderer: structlog.types.Processor
    if log_format == "console":
        renderer = line_renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        line_renderer = render_json_line
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    processors = structlog.get_config()["processors"]
    processors[:] = [*_shared_processors(), format_exc_info, line_renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: line_writer(sys.stdout),
        cache_logger_on_first_use=True,
    )
    json_lines = line_renderer is render_json_line
    _json_pipeline = (
        _JsonPipeline(processors, numeric_level, line_writer(sys.stdout)) if json_lines else None
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
