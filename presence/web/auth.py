"""``PRESENCE_API_TOKEN``: a bearer token every ``/v1/`` request must carry."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from presence.web.errors import json_error

API_PREFIX = "/v1/"

Refusal = Callable[[web.Request], web.Response | None]
"""The answer to a request refused before its handler runs (None: let it through)."""


def require_api_token(token: str) -> Refusal:
    """401 for ``/v1/`` requests without ``Authorization: Bearer <token>`` (checked by the
    one middleware, ``errors.json_errors``: a layer less for every request)."""
    expected = token.encode("utf-8")

    def refused(request: web.Request) -> web.Response | None:
        if not request.path.startswith(API_PREFIX):
            return None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # Header bytes that are not UTF-8 arrive as surrogate escapes: keep them as bytes.
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() == "bearer" and hmac.compare_digest(given, expected):
            return None
        reply = json_error(401, "unauthorized", "send Authorization: Bearer <token>")
        reply.headers["WWW-Authenticate"] = 'Bearer realm="presence"'
        return reply

    return refused
