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

PAGE = "index.html"
ASSETS = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
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


async def page(request: web.Request) -> web.Response:
    return _reply(request, _file(PAGE, "text/html"))


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return _reply(request, _file(name, ASSETS[name]))


def routes() -> list[web.RouteDef]:
    return [web.get("/dashboard", page), web.get("/dashboard/{asset}", asset)]
