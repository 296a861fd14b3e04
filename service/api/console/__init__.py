"""The operator's web console at ``/console`` on the admin listener (DESIGN "Operations").

A plain single page: ``static/index.html``, ``static/console.js`` and ``static/console.css``,
shipped as package data (no framework, no CDN, no build step). The page itself holds no data:
the script signs in with the admin token (kept in the tab's ``sessionStorage``) and calls the
admin API (``/admin/…``, Bearer) for everything it shows, so the page and its assets are served
without a token.

Only the files named in :data:`ASSETS` are served, read once when the app is built: any other
path under ``/console/`` (``..``, encoded slashes, anything) is a 404, never a file lookup.
Every answer carries :data:`SECURITY_HEADERS` (a Content-Security-Policy allowing only the
console's own origin, hence no inline script or style, ``nosniff``, no referrer, no framing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

CONSOLE_PATH = "/console"

# file name -> content type; the page is also served at /console and /console/.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        "object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    # Revalidated on each load (ETag), so a new version of the package shows at once.
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def load_assets() -> dict[str, Asset]:
    """The console's files from the package (``service/api/console/static``), read once."""
    static = resources.files(__name__).joinpath("static")
    assets = {}
    for name, content_type in ASSETS.items():
        body = static.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body, content_type, etag)
    return assets


def _answer(request: Request, asset: Asset | None) -> Response:
    if asset is None:
        return Response(
            b"not found\n",
            status_code=404,
            media_type="text/plain; charset=utf-8",
            headers=SECURITY_HEADERS,
        )
    headers = {**SECURITY_HEADERS, "etag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.content_type, headers=headers)
    if request.method == "HEAD":
        response.headers["content-length"] = str(len(asset.body))
    return response


async def console_page(request: Request) -> Response:
    """``GET /console`` (and ``/console/``): the page."""
    return _answer(request, load_assets()["index.html"])


async def console_asset(request: Request) -> Response:
    """``GET /console/{name}``: one of :data:`ASSETS`, else 404."""
    return _answer(request, load_assets().get(request.path_params["name"]))


def console_routes() -> list[BaseRoute]:
    """The console's routes, for the admin listener's app only."""
    load_assets()  # a package without its files fails when the app is built, not on a request
    methods = ["GET", "HEAD"]
    return [
        Route(CONSOLE_PATH, console_page, methods=methods),
        Route(CONSOLE_PATH + "/", console_page, methods=methods),
        Route(CONSOLE_PATH + "/{name:path}", console_asset, methods=methods),
    ]
