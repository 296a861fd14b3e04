"""``GET /v1/payments``: the query (``sort``, ``desc``, ``limit``, ``offset``), sorting and the
page with its ``prev``/``next`` links.

- ``limit`` and ``offset`` are strings in the spec: only digits are accepted (400 otherwise);
  ``limit`` must be between 1 and the configured maximum.
- ``sort`` and ``desc`` are arrays of attribute names, given as repeated parameters
  (``sort=status&sort=createdAt``), as ``sort[]=…``, or comma-separated. ``sort`` gives the order
  of the keys; a name in ``desc`` is sorted descending (and is added as a key if ``sort`` lacks
  it). Dotted names reach nested attributes (``purchase.total.value``). Payments without the
  attribute come last either way. Ties keep creation order. The first segment of a name must be
  an attribute of Payment (or ``id``), else 400.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import URL, QueryParams

from sandbox.errors import BadRequest

SORTABLE_ROOTS = frozenset(
    {
        "id",
        "status",
        "captured",
        "context",
        "payee",
        "payer",
        "purchase",
        "clientId",
        "clientNote",
        "plan",
        "cancelUrl",
        "successUrl",
        "billing",
        "createdAt",
        "canceledAt",
        "submittedAt",
        "approvedAt",
        "capturedAt",
        "failedAt",
        "completedAt",
    }
)


@dataclass(frozen=True)
class ListQuery:
    """A parsed listing query."""

    sort: tuple[str, ...]
    desc: tuple[str, ...]
    limit: int
    offset: int

    def keys(self) -> list[tuple[str, bool]]:
        """(attribute, descending) in order of priority."""
        keys = [(name, name in self.desc) for name in self.sort]
        keys += [(name, True) for name in self.desc if name not in self.sort]
        return keys


def _names(params: QueryParams, name: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in params.getlist(name) + params.getlist(f"{name}[]"):
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if part.split(".", 1)[0] not in SORTABLE_ROOTS:
                raise BadRequest(f"{name}: unknown attribute {part}")
            if part not in names:
                names.append(part)
    return tuple(names)


def _digits(params: QueryParams, name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name} must be a string of digits")
    return int(raw)


def parse_query(params: QueryParams, default_limit: int, max_limit: int) -> ListQuery:
    """Parse the query; BadRequest when it is invalid."""
    limit = _digits(params, "limit", default_limit)
    if not 1 <= limit <= max_limit:
        raise BadRequest(f"limit must be between 1 and {max_limit}")
    offset = _digits(params, "offset", 0)
    return ListQuery(_names(params, "sort"), _names(params, "desc"), limit, offset)


_MISSING = object()


def _lookup(payment: dict[str, Any], dotted: str) -> Any:
    value: Any = payment
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _comparable(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool | int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def sort_payments(
    payments: Sequence[dict[str, Any]], keys: list[tuple[str, bool]]
) -> list[dict[str, Any]]:
    """A stable sort of payments (as the API shows them) by several keys."""

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for name, descending in keys:
            left, right = _lookup(a, name), _lookup(b, name)
            if left is _MISSING or right is _MISSING:
                if left is right:
                    continue
                return 1 if left is _MISSING else -1
            lk, rk = _comparable(left), _comparable(right)
            if lk == rk:
                continue
            result = -1 if lk < rk else 1
            return -result if descending else result
        return 0

    return sorted(payments, key=functools.cmp_to_key(compare))


def page_link(url: URL, query: ListQuery, offset: int) -> str:
    """The URL of the page at ``offset`` with the same sorting and limit."""
    params: list[tuple[str, str]] = [("sort", name) for name in query.sort]
    params += [("desc", name) for name in query.desc]
    params += [("limit", str(query.limit)), ("offset", str(offset))]
    return str(url.replace(query=urlencode(params)))


def build_page(payments: Sequence[dict[str, Any]], query: ListQuery, url: URL) -> dict[str, Any]:
    """The Page body: ``data``, ``total``, ``offset``, ``limit`` and the links that exist."""
    ordered = sort_payments(payments, query.keys())
    total = len(ordered)
    page: dict[str, Any] = {
        "data": ordered[query.offset : query.offset + query.limit],
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
    }
    if query.offset > 0:
        page["prev"] = page_link(url, query, max(0, min(query.offset, total) - query.limit))
    if query.offset + query.limit < total:
        page["next"] = page_link(url, query, query.offset + query.limit)
    return page
