"""Who may call ``/v1/``: ``PRESENCE_API_TOKEN`` reads, ``PRESENCE_ADMIN_TOKEN`` reads too and
manages push subscriptions (``Authorization: Bearer <token>``).

- Outside ``/v1/``, nothing is asked (webhooks carry Twilio's signature).
- Under ``/v1/``: with either token set, a request without one of them is 401.
- Push subscriptions (``/v1/services/{sid}/subscriptions...``): reading takes either token,
  anything else the admin token (the API token gets 403). On a real Redis, every route of
  them answers 403 until ``PRESENCE_ADMIN_TOKEN`` is set; with no token at all, they can be
  managed on the embedded store only.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable

from aiohttp import web

from presence.web.errors import json_error

API_PREFIX = "/v1/"
SUBSCRIPTIONS = re.compile(r"^/v1/services/[^/]+/subscriptions(?:/|$)")
READS = ("GET", "HEAD")

Refusal = Callable[[web.Request], web.Response | None]
"""The answer to a request refused before its handler runs (None: let it through)."""


def _unauthorized() -> web.Response:
    reply = json_error(401, "unauthorized", "send Authorization: Bearer <token>")
    reply.headers["WWW-Authenticate"] = 'Bearer realm="presence"'
    return reply


def _bearer(request: web.Request) -> bytes | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Header bytes that are not UTF-8 arrive as surrogate escapes: keep them as bytes.
    return credentials.strip().encode("utf-8", "surrogateescape")


def _is(given: bytes | None, token: str | None) -> bool:
    return given is not None and token is not None and hmac.compare_digest(given, token.encode())


def access(api_token: str | None, admin_token: str | None, *, embedded: bool) -> Refusal | None:
    """The refusal of the service's one middleware (``errors.json_errors``: a layer less for
    every request); None when nothing is ever refused."""
    if api_token is None and admin_token is None and embedded:
        return None

    def refused(request: web.Request) -> web.Response | None:
        path = request.path
        if not path.startswith(API_PREFIX):
            return None
        given = _bearer(request)
        admin = _is(given, admin_token)
        reader = admin or _is(given, api_token)
        if SUBSCRIPTIONS.match(path):
            if admin_token is None and not embedded:
                return json_error(
                    403,
                    "forbidden",
                    "push subscriptions need PRESENCE_ADMIN_TOKEN on a real Redis: set it",
                )
            if api_token is None and admin_token is None:
                return None  # the embedded store, no token at all: open, as the rest
            if not reader:
                return _unauthorized()
            if request.method not in READS and not admin:
                return json_error(
                    403, "forbidden", "managing push subscriptions needs PRESENCE_ADMIN_TOKEN"
                )
            return None
        if api_token is None and admin_token is None:
            return None
        return None if reader else _unauthorized()

    return refused
