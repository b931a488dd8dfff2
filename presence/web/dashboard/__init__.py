"""``GET /dashboard``: a live page of a service's presence for operators, and its files.

The page is plain HTML, CSS and JavaScript kept beside this module (no build step) and read
once from the package. It reads everything through the query API and the change feed, like
any ``/v1/`` client, so it needs no token itself; the Content-Security-Policy lets it load and
connect to nothing but this service, and run no inline script or style.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from aiohttp import web

from presence.web import openapi

PAGE = "index.html"
ASSETS = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    # The JavaScript client, byte for byte clients/js/presence.js (tests/test_client_js.py).
    "presence.js": "text/javascript",
    "subscriptions.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
"""The files the page loads, ``/dashboard/<name>``, and their media types."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""Only this service's own origin, for every kind of load; no inline script or style, no
frame around the page (clickjacking), no form posted anywhere, no ``<base>``."""

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (the ETag makes that a 304): after an upgrade, the page and
    # its script never come from two versions.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


@cache
def _file(name: str, content_type: str) -> _File:
    body = (files(__name__) / name).read_bytes()
    return _File(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _reply(request: web.Request, found: _File) -> web.Response:
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=HEADERS | {"ETag": found.etag})
    return web.Response(
        body=found.body,
        content_type=found.content_type,
        charset="utf-8",
        headers=HEADERS | {"ETag": found.etag},
    )


_SECURITY_HEADERS = {
    name: openapi.required_header(value)
    for name, value in HEADERS.items()
    if name == "Content-Security-Policy"
}
_NOT_MODIFIED = {"description": "unchanged since the `ETag` sent in `If-None-Match`"}


@openapi.documented(
    get=openapi.Operation(
        operation_id="dashboard",
        summary="The live dashboard: an HTML page for operators",
        tag="dashboard",
        description=(
            "Who is online in a service, pending offline, endpoints, recent changes and webhook "
            "outcomes, updating live. The page itself needs no token: it reads `/v1/` like any "
            "client, asking for the API token when `/v1/` answers `401`. Its "
            "`Content-Security-Policy` allows only this service's own origin "
            "(docs/dashboard.md)."
        ),
        responses={
            "200": {
                "description": "the page",
                "headers": _SECURITY_HEADERS,
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            "304": _NOT_MODIFIED,
        },
    )
)
async def page(request: web.Request) -> web.Response:
    return _reply(request, _file(PAGE, "text/html"))


@openapi.documented(
    get=openapi.Operation(
        operation_id="dashboardAsset",
        summary="The dashboard's style sheet, scripts and icon",
        tag="dashboard",
        path_parameters=(
            openapi.path_parameter(
                "asset", "a file of the page", {"type": "string", "enum": sorted(ASSETS)}
            ),
        ),
        responses={
            "200": {
                "description": "the file",
                "headers": _SECURITY_HEADERS,
                "content": {
                    media: {"schema": {"type": "string"}} for media in sorted(set(ASSETS.values()))
                },
            },
            "304": _NOT_MODIFIED,
            "404": openapi.response_ref("NotFound"),
        },
    )
)
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return _reply(request, _file(name, ASSETS[name]))


def routes() -> list[web.RouteDef]:
    return [web.get("/dashboard", page), web.get("/dashboard/{asset}", asset)]
