"""YAML configuration files with ``${VAR}`` / ``${VAR:-default}`` taken from the environment.

Both the sources file and the subscribers file are read through :func:`expand_env`:

- ``${NAME}`` is the variable's value; an unset variable is an error naming it (so a missing
  secret is never silently empty);
- ``${NAME:-default}`` falls back to ``default`` (which may be empty) when ``NAME`` is unset;
- any other ``$`` (``$5``, ``$NAME`` without braces) is left as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from service.errors import ConfigFileError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """``value`` with every ``${VAR}`` in its strings replaced, at any depth of lists and dicts.

    Raises :class:`ConfigFileError` naming the variable (and ``where`` it was) when a variable
    without a default is unset.
    """
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
    """A YAML mapping from ``path`` with ``${ENV}`` references expanded.

    Every error is a :class:`ConfigFileError` whose message starts with ``path``.
    """
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
    try:
        expanded: dict[str, Any] = expand_env(data, os.environ if environ is None else environ)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    return expanded


__all__ = ["ConfigFileError", "expand_env", "load_yaml_file"]
