"""How the ``kartahook`` command reports a failure: one line on stderr and an exit code.

``kartahook.cli.main`` is the one error boundary: every exception a command lets out is turned
into ``kartahook <command>: <message>`` by :func:`describe` and :func:`scrub`, never a traceback
(unless ``KARTAHOOK_DEBUG=1``). Exit codes:

- ``1`` (:data:`RUNTIME`): something failed while running (an API refused or could not be
  reached, a check found problems);
- ``2`` (:data:`USAGE`): the invocation or the configuration is wrong (unknown command or
  option, bad value, malformed URL, missing setting);
- ``130`` (:data:`INTERRUPTED`): Ctrl-C.

Heavy libraries (httpx, redis, pydantic) are imported only once something has failed, so
``kartahook --help`` stays fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

RUNTIME = 1
USAGE = 2
INTERRUPTED = 130

DEBUG_ENV = "KARTAHOOK_DEBUG"
DEBUG_HINT = f"rerun with {DEBUG_ENV}=1 for the traceback"


class CliError(Exception):
    """A failure the CLI reports as its one line, with ``exit_code`` (1 runtime, 2 usage)."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(CliError):
    """A bad invocation (what argparse would print with the usage); exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)


# Secrets that can appear inside an exception's message.
_URL_PASSWORD = re.compile(r"(//[^/\s:@]*:)[^@\s/]+@")
_QUERY_SECRET = re.compile(r"((?:password|secret|token)=)[^&\s]+", re.IGNORECASE)
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=_-]+")
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY", re.IGNORECASE)
_MAX_LINE = 500


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    """Values that must never be printed: environment variables whose name says they hold a
    secret, plus ``extra`` (secrets given as options). Very short values are left out (they
    would blank ordinary words)."""
    values = [value for name, value in os.environ.items() if _SECRET_NAME.search(name)]
    values.extend(value for value in extra if value)
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets``, URL passwords, tokens and webhook secrets shown as ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _WEBHOOK_SECRET.sub("whsec_***", text)
    return _BEARER.sub(r"\1***", text)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` as one (bounded) line, redacted (:func:`redact`)."""
    line = redact(" ".join(str(text).split()), secrets)
    if len(line) > _MAX_LINE:
        line = line[: _MAX_LINE - 1] + "…"
    return line or "failed (no detail)"


def _settings_problem(exc: BaseException) -> str | None:
    """A pydantic validation error (a bad ``KARTAHOOK_*`` setting) without the rejected value,
    which may be a secret; None for any other exception."""
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return None
    if not isinstance(exc, ValidationError):
        return None
    from service.settings import Settings

    env_prefix = str(Settings.model_config.get("env_prefix", ""))
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or exc.title
        if exc.title == Settings.__name__ and error["loc"]:  # name the environment variable
            where = f"{env_prefix}{str(error['loc'][0]).upper()}"
        parts.append(f"{where}: {error['msg']}")
    return f"invalid configuration: {'; '.join(parts)}"


def describe(exc: BaseException) -> tuple[int, str, bool]:
    """``(exit code, message, expected)`` for an exception a command let out; ``expected`` is
    False for a bug (the caller adds the debug hint)."""
    import httpx
    from redis.exceptions import RedisError

    from kartahook.supervisor import ChildFailed
    from service.kartapay import KartaPayError

    if isinstance(exc, CliError):
        return exc.exit_code, exc.message, True
    settings = _settings_problem(exc)
    if settings is not None:
        return USAGE, settings, True
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return USAGE, f"bad URL: {exc}", True
    if isinstance(exc, httpx.HTTPStatusError):
        return RUNTIME, f"{exc.request.url} answered {exc.response.status_code}", True
    if isinstance(exc, httpx.HTTPError):
        try:
            where = str(exc.request.url)
        except RuntimeError:  # no request attached
            where = "the server"
        what = f"{type(exc).__name__}: {exc or 'no detail'}"
        if isinstance(exc, httpx.TransportError):
            return RUNTIME, f"cannot reach {where}: {what}", True
        return RUNTIME, f"request to {where} failed: {what}", True
    if isinstance(exc, KartaPayError):
        return RUNTIME, f"the KartaPay API failed: {exc}", True
    if isinstance(exc, ChildFailed):
        return RUNTIME, str(exc), True
    if isinstance(exc, RedisError):
        from service.store.client import error_line

        return RUNTIME, f"Redis failed: {error_line(exc)}", True
    if isinstance(exc, TimeoutError):
        return RUNTIME, f"timed out: {exc}" if str(exc) else "timed out", True
    if isinstance(exc, OSError):
        return RUNTIME, str(exc) or type(exc).__name__, True
    if isinstance(exc, ValueError):  # URL parsing, a malformed option or file
        return USAGE, str(exc) or type(exc).__name__, True
    return RUNTIME, f"unexpected error: {type(exc).__name__}: {exc}", False
