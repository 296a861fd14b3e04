"""docs/architecture.md's table of Redis keys lists exactly the keys service/store/layout.py
exports, and no code outside service/store/ spells a key or calls Redis from Lua in Python."""

from __future__ import annotations

import re
from pathlib import Path

from service.store import layout

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("service", "workers", "kartahook", "sandbox", "bench", "tests")


def doc_key_rows() -> list[tuple[str, str, str]]:
    """(pattern, type, TTL) of every row of the table under ``## Redis keys``."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Redis keys", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 5 or set(cells[0]) <= {"-"}:
            continue
        if cells[0] == "Pattern":
            continue
        rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return rows


def python_files() -> list[Path]:
    return [path for d in CODE_DIRS for path in sorted((ROOT / d).rglob("*.py"))]


def test_doc_table_lists_exactly_the_layout_patterns() -> None:
    """Each key pattern of layout.KEY_PATTERNS is one row of the doc, with its type and TTL."""
    rows = doc_key_rows()
    expected = [(k.pattern, k.type, k.ttl) for k in layout.KEY_PATTERNS]
    assert len(rows) == len(set(rows))
    assert sorted(rows) == sorted(expected)


def test_layout_patterns_cover_every_key_constant() -> None:
    """Every key format the layout module defines is listed in KEY_PATTERNS."""
    listed = {k.pattern for k in layout.KEY_PATTERNS}
    key_names = [
        name
        for name, value in vars(layout).items()
        if name.isupper()
        and isinstance(value, str)
        and (value.startswith(layout.KEY_PREFIX) or value.startswith("{queue}"))
        and name not in ("KEY_PREFIX", "FO_PREFIX")
    ]
    key_names += ["ARQ_JOB", "ARQ_IN_PROGRESS", "ARQ_RETRY", "ARQ_RESULT"]
    assert key_names and {getattr(layout, name) for name in key_names} <= listed


def test_no_lua_calls_in_python_and_no_key_literals_outside_the_store() -> None:
    """No .py file calls Redis from Lua source, and none outside service/store/ has a kh: key."""
    store = ROOT / "service" / "store"
    lua_call = "redis" + ".call("
    key_literal = re.compile("[\"']" + "kh" + ":")
    offenders = []
    for path in python_files():
        text = path.read_text()
        if lua_call in text:
            offenders.append(f"{path.relative_to(ROOT)}: {lua_call}")
        if store not in path.parents and key_literal.search(text):
            offenders.append(f"{path.relative_to(ROOT)}: key literal")
    assert offenders == []


def test_lua_files_name_no_key_prefix() -> None:
    """No .lua file of the store spells a key prefix: keys come in KEYS or from lib/keys.lua."""
    prefixes = {layout.KEY_PREFIX, layout.ARQ_JOB_PREFIX, layout.prefix(layout.EVENT_JOB_ID)}
    prefixes.add(layout.DELIVER_JOB_ID.split("{", 1)[0])
    prefixes.add(layout.WAKE_JOB_ID.split("{", 1)[0])
    files = sorted((ROOT / "service" / "store" / "lua").rglob("*.lua"))
    offenders = []
    for path in files:
        text = path.read_text()
        offenders += [f"{path.name}: {prefix}" for prefix in prefixes if prefix in text]
    assert len(files) >= 9 and offenders == []


def test_domain_modules_know_no_redis() -> None:
    """service/domain (events, subscribers, signing, lifecycle) imports neither redis nor store."""
    offenders = []
    for path in sorted((ROOT / "service" / "domain").rglob("*.py")):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                module = words[1]
                if module.split(".")[0] == "redis" or module.startswith("service.store"):
                    offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []
