"""``PRESENCE_API_TOKEN``: a bearer token every ``/v1/`` request must carry."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from presence.web.errors import json_error

API_PREFIX = "/v1/"


def require_api_token(token: str) -> Middleware:
    """A middleware answering 401 to ``/v1/`` requests without ``Authorization: Bearer <token>``."""
    expected = token.encode("utf-8")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX):
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            # Header bytes that are not UTF-8 arrive as surrogate escapes: keep them as bytes.
            given = credentials.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
                reply = json_error(401, "unauthorized", "send Authorization: Bearer <token>")
                reply.headers["WWW-Authenticate"] = 'Bearer realm="presence"'
                return reply
        return await handler(request)

    return check
