"""The service's runner: ``POST /webhooks/sync`` goes straight to its receiver.

Webhooks are nearly all of what a busy service is sent, and aiohttp's general way to a
handler cost a webhook 6% of its instructions (docs/benchmarks.md): resolving the path among
the app's routes, a match info made and frozen for each request, and the middleware chain
put around the handler. A webhook needs none of it: its path is known, and the one
middleware's answers (JSON errors, never a traceback) are given by calling that middleware
directly. Anything else, a webhook with ``Expect: 100-continue`` included, takes the app's
own way, so a route is still answered the same whichever way it comes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
"""What aiohttp's server calls with each request."""

WEBHOOK_PATH = "/webhooks/sync"
WEBHOOKS: web.AppKey[Handler] = web.AppKey("webhooks")
"""The receiver's handler, inside the app's middleware: what a webhook is answered with."""


class ServiceRunner(web.AppRunner):
    """An ``AppRunner`` whose server hands webhooks to ``app[WEBHOOKS]`` below the router."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = webhooks_first(self.app[WEBHOOKS], server.request_handler)
        return server


def webhooks_first(webhooks: Handler, routed: RequestHandler) -> RequestHandler:
    """A server's request handler: ``webhooks`` for ``POST /webhooks/sync`` (with or without
    a query, without ``Expect``), ``routed`` (the app's own) for everything else."""
    with_query = WEBHOOK_PATH + "?"

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path
        if (
            request.method == hdrs.METH_POST
            and (path == WEBHOOK_PATH or path.startswith(with_query))
            and hdrs.EXPECT not in request.headers
        ):
            # The server's requests are the app's (its request factory makes them).
            return await webhooks(cast(web.Request, request))
        return await routed(request)

    return handle
