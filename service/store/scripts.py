"""The one script runner: a Lua script loaded from ``lua/``, with its libraries and constants,
run by SHA (``EVALSHA``) with a reload after ``NOSCRIPT``.

A script file starts with a comment block (KEYS, ARGV, reply), may name the libraries of
``lua/lib/`` it uses on a line ``-- lib: name name``, and may hold ``{{NAME}}`` placeholders:
both are filled in from :mod:`service.store.layout` and :mod:`service.store.jobs` when the script
is loaded, so no key prefix, job-id format or function name is spelled in Lua. The same
:class:`Script` runs on a client (:meth:`Script.__call__`) and through the ingestion's
:class:`service.store.batcher.ScriptBatcher`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from service.domain.lifecycle import FINAL
from service.store import layout
from service.store.jobs import lua_arq_job_body

LUA_DIR = Path(__file__).parent / "lua"

Arg = str | bytes | int | float

_LIB_LINE = re.compile(r"^-- lib:(.*)$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


@functools.cache
def constants() -> dict[str, str]:
    """What each ``{{NAME}}`` of a script or library becomes: Lua source."""
    return {
        "KEY_FUNCTIONS": layout.lua_key_functions(),
        "ARQ_JOB_BODY": lua_arq_job_body(),
        "ARQ_EXPIRES_EXTRA_MS": str(layout.ARQ_EXPIRES_EXTRA_MS),
        "LINE_TTL_S": str(layout.LINE_TTL_S),
        "FANOUT_DELIVER": layout.lua_string(layout.FANOUT_DELIVER),
        "FANOUT_WAKE": layout.lua_string(layout.FANOUT_WAKE),
        "PROCESS_EVENT": layout.lua_string(layout.PROCESS_EVENT),
        "CONVERGENCE_SOURCE": layout.lua_string(layout.CONVERGENCE_SOURCE),
        "FINAL_STATUSES": "{" + ", ".join(f"[{layout.lua_string(s)}] = true" for s in FINAL) + "}",
    }


def _fill(text: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in constants():
            raise KeyError(f"{where}: unknown placeholder {{{{{name}}}}}")
        return constants()[name]

    return _PLACEHOLDER.sub(replace, text)


def _libs(text: str) -> list[str]:
    return [name for line in _LIB_LINE.findall(text) for name in line.split()]


def build_source(text: str, where: str = "inline") -> str:
    """The full source of a script: the libraries it names (each once, dependencies first),
    then the script, placeholders filled in."""
    parts: list[str] = []
    seen: set[str] = set()

    def add_lib(lib: str) -> None:
        if lib in seen:
            return
        seen.add(lib)
        lib_text = (LUA_DIR / "lib" / f"{lib}.lua").read_text()
        for dependency in _libs(lib_text):
            add_lib(dependency)
        parts.append(_fill(lib_text, f"lib/{lib}.lua"))

    for lib in _libs(text):
        add_lib(lib)
    parts.append(_fill(text, where))
    return "\n".join(parts)


def load_source(name: str) -> str:
    """The full source of ``lua/<name>.lua`` (:func:`build_source`)."""
    return build_source((LUA_DIR / f"{name}.lua").read_text(), f"{name}.lua")


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, as ``EVALSHA`` wants it."""

    source: str
    name: str = "inline"
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)

    @classmethod
    def load(cls, name: str) -> Script:
        """The script ``lua/<name>.lua``, with its libraries and constants."""
        return cls(load_source(name), name)

    async def __call__(
        self, client: aioredis.Redis, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        """Run on ``client`` by SHA; after ``NOSCRIPT`` load the script and run it again."""
        argv: list[Any] = [*keys, *args]
        try:
            return await client.evalsha(self.sha, len(keys), *argv)  # type: ignore[misc]
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *argv)  # type: ignore[misc]
