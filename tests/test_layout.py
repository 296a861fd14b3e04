"""The code's shape: one error tree, and which package may import which."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import service.errors
from service.errors import KartahookError

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_error_tree_docstring_names_every_error_class() -> None:
    """service/errors.py's docstring draws every exception class the module defines."""
    doc = service.errors.__doc__ or ""
    classes = [
        name
        for name, obj in vars(service.errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert len(classes) > 10
    missing = [name for name in classes if name not in doc]
    assert missing == []
    assert "service.kartapay.errors" in doc


def test_every_service_error_is_in_the_tree() -> None:
    """Every exception class defined under service/ (the KartaPay client's own tree aside)
    subclasses KartahookError, and those defined outside service/errors.py are drawn in it."""
    doc = service.errors.__doc__ or ""
    outside = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module_name.endswith("__init__") or module_name.startswith("service.kartapay"):
            continue
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if not (inspect.isclass(obj) and issubclass(obj, BaseException)):
                continue
            if obj.__module__ == module_name:
                assert issubclass(obj, KartahookError), f"{module_name}.{name}"
                if module_name != "service.errors":
                    outside.append(obj)
    assert outside
    from service.api.ingest.sources.base import Rejection

    drawn = [cls for cls in outside if f"{cls.__module__}.{cls.__name__}" in doc]
    assert set(outside) - set(drawn) <= {c for c in outside if issubclass(c, Rejection)}
    from service.store.subscribers import SubscriberError

    assert issubclass(SubscriberError, ValueError)  # callers that catch ValueError still do


def test_service_never_imports_workers() -> None:
    """Nothing under service/ imports workers/."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "service").rglob("*.py"))
        if any(name.split(".")[0] == "workers" for name in imported_modules(path))
    ]
    assert offenders == []


def test_processing_reaches_delivery_only_through_its_interface() -> None:
    """workers/processing imports from workers.delivery only the package (its Deliveries
    interface), never a delivery module."""
    offenders = []
    for path in sorted((ROOT / "workers" / "processing").rglob("*.py")):
        for name in imported_modules(path):
            if name.startswith("workers.delivery.") and name.removeprefix(
                "workers.delivery."
            ) not in {"Deliveries", "StartedDelivery", "bodies_only", "FanoutHandoff"}:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_service_has_at_most_ten_top_level_modules() -> None:
    """service/ is grouped by role: at most ten modules beside its packages (api, domain, store,
    kartapay), so a newcomer sees the roles before the files."""
    modules = sorted(p.name for p in (ROOT / "service").glob("*.py") if p.name != "__init__.py")
    packages = sorted(p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists())
    assert len(modules) <= 10, modules
    assert packages == ["api", "domain", "kartapay", "store"]


def test_the_repository_reads_nothing_beside_it() -> None:
    """No code, test, doc or build file points at the shared folder beside the repository: a
    clone stands on its own."""
    offenders = []
    for path in ROOT.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        if path.suffix not in {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".lua", ""}:
            continue
        if path.relative_to(ROOT).parts[0] in {"var", "build"}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if "../" + "shared" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
