"""The sources file (``KARTAHOOK_SOURCES_FILE``): YAML, with ``${ENV_VAR}`` expanded in strings
(by :mod:`service.config_files`, which the subscribers file uses too).

```yaml
sources:
  kartapay: {secrets: ["${KARTAPAY_WEBHOOK_SECRET}"]}
```

``${NAME}`` must be set (an unset variable is an error, so a missing secret is never silently
empty); ``${NAME:-default}`` falls back to ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.api.ingest.sources.base import Source
from service.api.ingest.sources.registry import SourceConfigError, build_sources
from service.config_files import ConfigFileError, expand_env, load_yaml_file


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
