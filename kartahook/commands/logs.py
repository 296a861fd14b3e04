"""``kartahook logs [COMPONENT] [--follow] [--json]``: the logs of ``kartahook run``, readably.

``kartahook run`` writes one log per process under ``var/log`` (``service.log``,
``worker.log``, ``sandbox.log``, ``demo-subscriber.log``, …): structlog JSON lines, plus
whatever a process printed otherwise (shown as it is). Each JSON line becomes one line: time,
component, level, event, then the other fields as ``key=value`` (ids first). Without COMPONENT
every log is shown, merged by time. ``--lines N`` shows the last N lines (0: all);
``--follow`` then keeps printing new lines (a log truncated by a new run is read again from its
start, a log that appears is picked up) until Ctrl-C; ``--json`` prints each JSON line as it is,
with a ``component`` field added.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kartahook.errors import USAGE, CliError
from kartahook.run_state import DEFAULT_VAR_DIR

# Shown first, in this order, after the event; the other fields follow as they come.
KEY_FIELDS = (
    "payment_id",
    "webhook_id",
    "event_id",
    "subscriber",
    "source",
    "event_type",
    "type",
    "status",
    "outcome",
    "attempt",
    "error",
)
LAYOUT_FIELDS = frozenset({"timestamp", "level", "event", "logger"})
MAX_VALUE = 200
FOLLOW_POLL_S = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "component", nargs="?", help="one process's log (service, worker, …); default: all"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    parser.add_argument(
        "-n",
        "--lines",
        type=int,
        default=50,
        help="show the last N lines first (0: all; default 50)",
    )
    parser.add_argument(
        "--var-dir", type=Path, default=DEFAULT_VAR_DIR, help="kartahook run's directory"
    )


@dataclass(order=True)
class Line:
    """One line of a log, with its time (for merging) and component."""

    at: str
    order: int
    component: str = field(compare=False)
    text: str = field(compare=False)
    data: dict[str, Any] | None = field(compare=False, default=None)


def parse(component: str, text: str, order: int, previous_at: str) -> Line:
    """A log line; a line without a timestamp (not JSON) sorts after the one before it."""
    data: Any = None
    if text.startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(text)
    if not isinstance(data, dict):
        return Line(previous_at, order, component, text)
    at = data.get("timestamp")
    return Line(at if isinstance(at, str) else previous_at, order, component, text, data)


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = " ".join(text.split())
    if " " in text or not text:
        text = orjson.dumps(text).decode()
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def render(line: Line, width: int, as_json: bool) -> str:
    """The line as shown: readable, or its JSON with ``component`` added."""
    if line.data is None:
        return line.text if as_json else f"{'':<12}  {line.component:<{width}}  {line.text}"
    if as_json:
        return orjson.dumps({**line.data, "component": line.component}).decode()
    data = line.data
    at = str(data.get("timestamp", ""))[11:23]
    level = str(data.get("level", "")).lower()
    event = str(data.get("event", ""))
    keys = [k for k in KEY_FIELDS if k in data]
    keys += [k for k in data if k not in LAYOUT_FIELDS and k not in KEY_FIELDS]
    fields = " ".join(f"{k}={_value(data[k])}" for k in keys if data[k] is not None)
    return f"{at:<12}  {line.component:<{width}}  {level:<7}  {event}  {fields}".rstrip()


def log_files(log_dir: Path) -> dict[str, Path]:
    """Component name -> its log file."""
    if not log_dir.is_dir():
        return {}
    return {path.stem: path for path in sorted(log_dir.glob("*.log")) if path.is_file()}


@dataclass
class Tail:
    """Where reading one log has got to (for ``--follow``)."""

    component: str
    path: Path
    inode: int = 0
    offset: int = 0
    partial: bytes = b""
    count: int = 0
    last_at: str = ""

    def read_new(self) -> list[Line]:
        """The whole lines added since the last call; from the start after a truncation or
        when the file was replaced (a new run)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset, self.partial = stat.st_ino, 0, b""
        if stat.st_size == self.offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        lines = []
        for raw in complete:
            text = raw.decode(errors="replace").rstrip("\r")
            if not text.strip():
                continue
            self.count += 1
            line = parse(self.component, text, self.count, self.last_at)
            self.last_at = line.at
            lines.append(line)
        return lines


def run(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise CliError("--lines must be 0 or more", USAGE)
    log_dir = args.var_dir / "log"
    files = log_files(log_dir)
    if not files:
        raise CliError(f"no logs in {log_dir}: start `make run` (or give --var-dir)")
    if args.component is not None and args.component not in files:
        raise CliError(f"unknown component {args.component!r}; known: {', '.join(files)}", USAGE)
    chosen = [args.component] if args.component else list(files)
    tails = {name: Tail(name, files[name]) for name in chosen}
    width = max(len(name) for name in files)
    first = [tail.read_new() for tail in tails.values()]
    merged = list(heapq.merge(*first)) if len(first) > 1 else first[0]
    if args.lines:
        merged = merged[-args.lines :]
    out = sys.stdout
    for line in merged:
        out.write(render(line, width, args.json) + "\n")
    out.flush()
    if not args.follow:
        return 0
    try:
        _follow(tails, log_dir, args, width)
    except KeyboardInterrupt:  # the way to stop following: not an error
        return 0
    return 0


def _follow(tails: dict[str, Tail], log_dir: Path, args: argparse.Namespace, width: int) -> None:
    out = sys.stdout
    while True:
        if args.component is None:  # a log that appeared meanwhile
            for name, path in log_files(log_dir).items():
                if name not in tails:
                    tails[name] = Tail(name, path)
                    width = max(width, len(name))
        new = sorted(line for tail in tails.values() for line in tail.read_new())
        for line in new:
            out.write(render(line, width, args.json) + "\n")
        if new:
            out.flush()
        time.sleep(FOLLOW_POLL_S)


__all__ = ["Line", "Tail", "log_files", "parse", "render", "run"]
