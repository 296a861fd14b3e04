"""Admin routes that declare their models, and the OpenAPI 3.1 document built from them.

Each admin route is an :class:`ApiRoute`: a Starlette ``Route`` of one method with a
:class:`Spec` (summary, query model, body model, response model, status, error statuses).
Handlers read their input with :func:`query_of` and :func:`body_of` and answer with
:func:`reply`, through the same models. :func:`openapi_document` walks the routes of the admin
router and builds ``GET /admin/openapi.json`` from them: a route without a spec cannot be
mounted, so the document lists exactly what the router serves (a test holds the two equal).

The document is served behind the admin token like every other admin route (the admin
listener is internal; one rule, no exception in the token check).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.api.admin.models import ErrorBody, OpenApiDocument
from service.errors import BadRequest

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]

ERROR_TEXT = {
    400: "bad parameters or body",
    401: "no admin token",
    403: "wrong admin token, or the admin API is off",
    404: "unknown id",
    409: "conflict with the current state",
    410: "past retention",
    422: "well-formed but invalid",
    503: "Redis did not answer: try again after Retry-After",
}


@dataclass(frozen=True)
class Spec:
    """What a route takes and answers, for its handler and for the document."""

    summary: str
    response: type[BaseModel] | None = None
    """The answer's model; None: no content."""
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    tag: str = "admin"


class ApiRoute(Route):
    """A Starlette route of one method, with its :class:`Spec`."""

    def __init__(self, path: str, method: str, endpoint: Handler, spec: Spec) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method
        self.spec = spec


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"{where}: {first['msg']}"


def query_of(request: Request, model: type[M]) -> M:
    """The query parameters as ``model``, or :class:`BadRequest` ``invalid_query``."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise BadRequest("invalid_query", _first_error(exc)) from None


async def body_of(request: Request, model: type[M]) -> M:
    """The JSON body as ``model`` (an empty body is ``{}``), or :class:`BadRequest`
    (``invalid_json``: not a JSON object; ``invalid_body``: not what the route takes)."""
    raw = await request.body()
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("invalid_body", _first_error(exc)) from None


def reply(model: type[BaseModel], data: Any, status_code: int = 200) -> JSONResponse:
    """``data`` shaped by ``model`` (what the document promises), as JSON."""
    return JSONResponse(model.model_validate(data).model_dump(mode="json"), status_code)


# ---- the document ------------------------------------------------------------------------------

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
_REF = "#/components/schemas/{model}"


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    params = []
    for name, field in model.model_fields.items():
        prop = dict(schema["properties"][name])
        description = prop.pop("description", None) or field.description
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": field.is_required(),
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def openapi_document(routes: Sequence[BaseRoute], prefix: str = "/admin") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (each an :class:`ApiRoute`), under ``prefix``."""
    api_routes = []
    for route in routes:
        if not isinstance(route, ApiRoute):
            raise TypeError(f"admin route {getattr(route, 'path', route)!r} declares no models")
        api_routes.append(route)
    pairs: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for route in api_routes:
        if route.spec.body is not None:
            pairs.append((route.spec.body, "validation"))
        if route.spec.response is not None:
            pairs.append((route.spec.response, "serialization"))
    refs, defs = models_json_schema(pairs, ref_template=_REF)
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for route in api_routes:
        spec = route.spec
        path = _PATH_PARAM.sub(r"{\1}", prefix + route.path)
        operation: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": f"{route.method.lower()}_{route.name}",
            "tags": [spec.tag],
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(route.path)
        ]
        if spec.query is not None:
            params += _query_parameters(spec.query)
        if params:
            operation["parameters"] = params
        if spec.body is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": refs[(spec.body, "validation")]}},
            }
        responses: dict[str, Any] = {}
        if spec.response is None:
            responses[str(spec.status)] = {"description": spec.summary}
        else:
            responses[str(spec.status)] = {
                "description": spec.summary,
                "content": {"application/json": {"schema": refs[(spec.response, "serialization")]}},
            }
        codes = {401, 403, 503, *spec.errors}
        if spec.query is not None or spec.body is not None:
            codes.add(400)
        for code in sorted(codes):
            responses[str(code)] = {
                "description": ERROR_TEXT.get(code, "refused"),
                "content": {"application/json": {"schema": error_ref}},
            }
        operation["responses"] = responses
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kartahook admin API",
            "version": "1",
            "description": "Served on the admin listener; every route needs "
            "Authorization: Bearer <KARTAHOOK_ADMIN_TOKEN>.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def openapi_route(routes: Sequence[BaseRoute]) -> ApiRoute:
    """``GET /openapi.json``: the document of ``routes`` and of itself, built once."""
    document: dict[str, Any] = {}

    async def openapi_json(_: Request) -> Response:
        return JSONResponse(document)

    route = ApiRoute(
        "/openapi.json",
        "GET",
        openapi_json,
        Spec("The OpenAPI 3.1 document of the admin API", OpenApiDocument, tag="meta"),
    )
    document.update(openapi_document([*routes, route]))
    return route
