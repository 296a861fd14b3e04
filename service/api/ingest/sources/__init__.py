"""Inbound webhook sources: one module per provider, built from the sources file."""

from service.api.ingest.sources.base import (
    Forbidden,
    InboundRequest,
    Locator,
    MalformedRequest,
    NotAuthentic,
    Rejection,
    Source,
    SourceOptions,
    SourceUnavailable,
    Unroutable,
    VerifiedEvent,
    WrongContentType,
)
from service.api.ingest.sources.registry import (
    SOURCE_TYPES,
    SourceConfigError,
    build_source,
    build_sources,
)

__all__ = [
    "SOURCE_TYPES",
    "Forbidden",
    "InboundRequest",
    "Locator",
    "MalformedRequest",
    "NotAuthentic",
    "Rejection",
    "Source",
    "SourceConfigError",
    "SourceOptions",
    "SourceUnavailable",
    "Unroutable",
    "VerifiedEvent",
    "WrongContentType",
    "build_source",
    "build_sources",
]
