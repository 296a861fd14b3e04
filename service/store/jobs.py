"""arq jobs in arq's own format, serialized as JSON (never pickle), so a stock arq ``Worker`` runs
what ingestion and processing write directly with Lua."""

from __future__ import annotations

import re
from typing import Any

import orjson

from service.store.layout import lua_string


def serialize(obj: Any) -> bytes:
    """arq ``job_serializer``: JSON via orjson."""
    return orjson.dumps(obj)


def deserialize(data: bytes) -> Any:
    """arq ``job_deserializer``: JSON via orjson."""
    return orjson.loads(data)


def _job(function: Any, args: Any, enqueue_time_ms: Any, job_try: int | None) -> dict[str, Any]:
    """The job as ``arq.jobs.serialize_job`` builds it before serializing."""
    return {"t": job_try, "f": function, "a": args, "k": {}, "et": enqueue_time_ms}


def arq_job_bytes(
    function: str, args: list[Any], enqueue_time_ms: int, job_try: int | None = None
) -> bytes:
    """A job body exactly as ``arq.jobs.serialize_job`` writes it, with the JSON serializer."""
    return serialize(_job(function, args, enqueue_time_ms, job_try))


def lua_arq_job_body() -> str:
    """A Lua function ``arq_job_body(func, args_json, enqueue_ms)``: the body :func:`arq_job_bytes`
    writes (first try), built from the same shape."""
    shape = serialize(_job("@@func@@", "@@args@@", "@@enqueue@@", None)).decode()
    pieces = []
    for i, piece in enumerate(re.split(r'"@@(\w+)@@"', shape)):
        if i % 2 == 0:
            pieces.append(lua_string(piece))
        elif piece == "func":
            pieces.append("cjson.encode(func)")
        elif piece == "args":
            pieces.append("args_json")
        else:
            pieces.append("enqueue_ms")
    return (
        "local function arq_job_body(func, args_json, enqueue_ms)\n"
        f"  return {' .. '.join(pieces)}\n"
        "end\n"
    )
