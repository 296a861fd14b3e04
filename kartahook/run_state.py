"""``var/run.json``: what a running ``kartahook run`` started, and where, for the other commands.

``kartahook run`` writes it once everything is ready and removes it when it stops. It holds the
URLs of the parts, the pids, the Redis URL and the admin token, so the file is created with
mode 0600 (never widened and then narrowed: :func:`write_run_state` creates a fresh file with
that mode and renames it into place, so no reader ever sees a partial or a wider file).

The commands that talk to a stack (``subscribers``, ``dlq``, ``status``, ``listen``,
``trigger``, ``demo``) find it with :func:`discover`: an explicit option wins, then the
``KARTAHOOK_*`` environment variable, then ``run.json`` (only while the run that wrote it is
alive), then the default. The admin token of ``run.json`` is only ever sent to the admin URL of
``run.json``: given another ``--admin-url``, the token must come from ``--token`` or the
environment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_STATE_FILE = "run.json"
DEFAULT_VAR_DIR = Path("var")
RUN_STATE_MODE = 0o600


def run_state_path(var_dir: Path) -> Path:
    return var_dir / RUN_STATE_FILE


def write_run_state(var_dir: Path, state: Mapping[str, Any]) -> Path:
    """Write ``run.json`` under ``var_dir``: a new file created with mode 0600, renamed into
    place (a reader sees the old file or the whole new one)."""
    path = run_state_path(var_dir)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, RUN_STATE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(dict(state), indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return path


def read_run_state(var_dir: Path) -> dict[str, Any]:
    """What ``run.json`` under ``var_dir`` says, or ``{}`` (no file, unreadable, malformed)."""
    try:
        state = json.loads(run_state_path(var_dir).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_run_state(var_dir: Path) -> dict[str, Any]:
    """``run.json`` when the ``kartahook run`` that wrote it still runs, else ``{}`` (a file
    left by a killed run names ports nothing listens on any more)."""
    state = read_run_state(var_dir)
    try:
        pid = int(state.get("pid", 0))
    except (TypeError, ValueError):
        return {}
    return state if pid_alive(pid) else {}


def discover(
    explicit: str | None, env_name: str, state: Mapping[str, Any], key: str, default: str | None
) -> str | None:
    """The first of: ``explicit``, ``$env_name``, ``state[key]``, ``default``."""
    if explicit:
        return explicit
    from_env = os.environ.get(env_name)
    if from_env:
        return from_env
    recorded = state.get(key)
    if isinstance(recorded, str) and recorded:
        return recorded
    return default


def discover_admin(
    admin_url: str | None, token: str | None, var_dir: Path, default_url: str
) -> tuple[str, str | None]:
    """The admin API's URL and token (:func:`discover`); ``run.json``'s token only for
    ``run.json``'s own admin URL."""
    state = live_run_state(var_dir)
    url = discover(admin_url, "KARTAHOOK_ADMIN_URL", state, "admin_url", default_url) or ""
    chosen = discover(token, "KARTAHOOK_ADMIN_TOKEN", {}, "", None)
    if chosen is None and url == state.get("admin_url"):
        recorded = state.get("admin_token")
        chosen = recorded if isinstance(recorded, str) and recorded else None
    return url, chosen
