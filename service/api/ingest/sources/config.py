"""The sources file (``KARTAHOOK_SOURCES_FILE``): YAML, with ``${ENV_VAR}`` expanded in strings.

```yaml
sources:
  kartapay: {secrets: ["${KARTAPAY_WEBHOOK_SECRET}"]}
```

``${NAME}`` must be set (an unset variable is an error, so a missing secret is never silently
empty); ``${NAME:-default}`` falls back to ``default``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from service.api.ingest.sources.base import Source
from service.api.ingest.sources.registry import build_sources

# Defined in service.errors (the error tree), re-exported here.
from service.errors import ConfigFileError as ConfigFileError
from service.errors import SourceConfigError as SourceConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """``value`` with every ``${VAR}`` in its strings replaced, at any depth."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigFileError(f"{where or 'value'}: environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(item, environ, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            key: expand_env(item, environ, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    return value


def load_yaml_file(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A YAML mapping from ``path`` with ``${ENV}`` references expanded."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping")
    expanded: dict[str, Any] = expand_env(data, os.environ if environ is None else environ)
    return expanded


def load_sources_config(
    path: Path, environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """The ``sources:`` mapping of a sources file, expanded but not yet validated."""
    data = load_yaml_file(path, environ)
    unknown = set(data) - {"sources"}
    if unknown:
        raise ConfigFileError(f"{path}: unknown top-level keys: {', '.join(sorted(unknown))}")
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise ConfigFileError(f"{path}: 'sources' must be a mapping of name to options")
    for name, options in sources.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise ConfigFileError(f"{path}: source name {name!r} must match [a-z0-9][a-z0-9_-]*")
        if options is not None and not isinstance(options, dict):
            raise ConfigFileError(f"{path}: source {name!r} must be a mapping of options")
    return {name: dict(options or {}) for name, options in sources.items()}


def load_sources(path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, Source]:
    """The configured sources; none when no file is configured.

    Raises :class:`ConfigFileError` or :class:`SourceConfigError`.
    """
    if path is None:
        return {}
    return build_sources(load_sources_config(path, environ))


__all__ = [
    "ConfigFileError",
    "SourceConfigError",
    "expand_env",
    "load_sources",
    "load_sources_config",
    "load_yaml_file",
]
