"""Source types by name, and building the configured sources from the sources file.

Adding a provider: write ``service/api/ingest/sources/<provider>.py`` with a :class:`Source`
subclass, add one line to :data:`SOURCE_TYPES`, and add its entry to the sources file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from service.api.ingest.sources.base import Source
from service.api.ingest.sources.basic_auth import (
    HoloSource,
    MVolaComorosSource,
    MVolaMadagascarSource,
)
from service.api.ingest.sources.huri import HuriSource
from service.api.ingest.sources.kartapay import KartaPaySource
from service.api.ingest.sources.paypal import PayPalSource
from service.api.ingest.sources.stripe import StripeSource

# Defined in service.errors (the error tree), re-exported here.
from service.errors import SourceConfigError as SourceConfigError

SOURCE_TYPES: dict[str, type[Source]] = {
    "kartapay": KartaPaySource,
    "stripe": StripeSource,
    "paypal": PayPalSource,
    "mvola-mg": MVolaMadagascarSource,
    "mvola-km": MVolaComorosSource,
    "holo": HoloSource,
    "huri": HuriSource,
}


def build_source(name: str, raw: Mapping[str, Any]) -> Source:
    """One source from its entry in the sources file (``type`` defaults to the name)."""
    if not isinstance(raw, Mapping):
        raise SourceConfigError(f"source {name!r}: expected a mapping of options")
    type_name = str(raw.get("type") or name)
    source_type = SOURCE_TYPES.get(type_name)
    if source_type is None:
        known = ", ".join(sorted(SOURCE_TYPES))
        raise SourceConfigError(f"source {name!r}: unknown type {type_name!r} (known: {known})")
    try:
        return source_type.from_config(name, raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise SourceConfigError(f"source {name!r}: {problems}") from None
    except ValueError as exc:
        raise SourceConfigError(f"source {name!r}: {exc}") from None


def build_sources(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Source]:
    """All configured sources by name (the ``{source}`` of ``/v1/webhooks/{source}``)."""
    return {name: build_source(name, raw) for name, raw in config.items()}


def source_problems(config: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every source's configuration problem (one line each, naming source and field)."""
    problems = []
    for name, raw in config.items():
        try:
            build_source(name, raw)
        except SourceConfigError as exc:
            problems.append(str(exc))
    return problems
