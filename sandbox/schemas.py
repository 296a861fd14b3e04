"""Request schemas of the KartaPay API, copied from ``kartapay-api-spec.json``, and a small
validator for them.

The schemas are the spec's, descriptions and titles left out, with the two documented fixes
(docs/sandbox.md): patterns without their JavaScript slashes, and ``Payer.required`` reduced to
``email`` (the spec lists ``firstName``/``lastName``, which are not properties). A test compares
these schemas with the spec file, so they cannot drift apart unnoticed.

The validator covers the keywords these schemas use: type, properties, required, enum, pattern
and items. Extra properties are allowed, as in the spec.
"""

from __future__ import annotations

import re
from typing import Any

SOURCES = ("HOL", "HRM", "MVK", "MVM", "PYP", "STR")
LOCALE_PATTERN = r"^[a-z]{2}-[A-Z]{2}$"
PHONE_PATTERN = r"^\+[0-9]+$"

_STRING: dict[str, Any] = {"type": "string"}


def _amount() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"value": _STRING, "currency": _STRING},
        "required": ["value", "currency"],
    }


CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "locale": {"type": "string", "pattern": LOCALE_PATTERN},
        "channels": {"type": "array", "items": _STRING},
        "redirectMode": {"type": "string", "enum": ["embedded", "hosted"]},
        "terminalId": _STRING,
    },
}

PAYER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "fullName": _STRING,
        "email": _STRING,
        "phone": {"type": "string", "pattern": PHONE_PATTERN},
        "address": {
            "type": "object",
            "properties": {
                name: _STRING
                for name in ("line1", "line2", "line3", "city", "state", "postcode", "country")
            },
            "required": ["line1", "city", "country"],
        },
    },
    "required": ["email"],
}

PURCHASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "total": _amount(),
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": _STRING, "quantity": _STRING, "amount": _amount()},
                "required": ["name", "quantity", "amount"],
            },
        },
    },
    "required": ["total"],
}

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"source": {"type": "string", "enum": list(SOURCES)}},
}

CLAIM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "context": CONTEXT_SCHEMA,
        "payer": PAYER_SCHEMA,
        "purchase": PURCHASE_SCHEMA,
        "clientId": _STRING,
        "clientNote": _STRING,
        "plan": PLAN_SCHEMA,
        "cancelUrl": _STRING,
        "successUrl": _STRING,
    },
    "required": ["purchase"],
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def validate(schema: dict[str, Any], value: Any, path: str = "body") -> list[str]:
    """The problems of ``value`` against ``schema``, one readable line each (empty: valid)."""
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _TYPES[kind])
        if ok and kind in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            return [f"{path} must be of type {kind}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path} must be one of {', '.join(map(str, schema['enum']))}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        problems.append(f"{path} must match {schema['pattern']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}.{name} is required")
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                problems.extend(validate(sub, value[name], f"{path}.{name}"))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems.extend(validate(schema["items"], item, f"{path}[{index}]"))
    return problems
