"""JSON error replies, and the middleware that makes every error one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from presence.metrics import Metrics
from presence.model import StoreUnavailable
from presence.web.replies import json_reply

log = logging.getLogger("presence.web")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class BadRequest(Exception):
    """Raised by a handler for a request it cannot answer; becomes a 400 (or ``status``)."""

    status = 400

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


class NotFound(BadRequest):
    """Raised by a handler for a thing the path names that does not exist."""

    status = 404


def json_error(status: int, error: str, message: str) -> web.Response:
    """``{"error": code, "message": text}`` with the given status."""
    return json_reply({"error": error, "message": message}, status)


def store_unavailable() -> web.Response:
    return json_error(
        503,
        "store_unavailable",
        "Redis cannot be reached; the request took effect in full or not at all, retry later",
    )


def json_errors(
    metrics: Metrics, refuse: Callable[[web.Request], web.Response | None] | None = None
) -> Middleware:
    """The service's one middleware: it answers what ``refuse`` refuses (a request without
    the API token), then routing errors, Redis outages and bugs in JSON, never with a
    traceback."""

    @web.middleware
    async def answer_in_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        if refuse is not None and (refusal := refuse(request)) is not None:
            return refusal
        try:
            response: web.StreamResponse = await handler(request)
        except BadRequest as error:
            return json_error(error.status, error.error, error.message)
        except StoreUnavailable as error:
            log.warning("store unavailable for %s %s: %s", request.method, request.path, error)
            metrics.redis_error("query")
            return store_unavailable()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            code = _CODES.get(error.status, "http_error")
            # aiohttp's own text names the limit a body went over; a reason phrase would not.
            message = error.text if error.status == 413 and error.text else error.reason
            reply = json_error(error.status, code, message)
            for name in ("Allow", "WWW-Authenticate"):
                if name in error.headers:
                    reply.headers[name] = error.headers[name]
            return reply
        except Exception:
            log.exception("unhandled error for %s %s", request.method, request.path)
            return json_error(500, "internal_error", "an unexpected error occurred; see the logs")
        return response

    return answer_in_json
