"""The aiohttp application: routes, middlewares, and the resources it owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from presence.activity import Activity
from presence.events import MAX_NAME_LENGTH
from presence.feed.hub import FeedHub
from presence.metrics import CONTENT_TYPE, Metrics
from presence.model import StoreUnavailable
from presence.push.leases import Leases
from presence.settings import Settings
from presence.store.base import PresenceStore
from presence.sweeper import Sweeper
from presence.twilio import JSON
from presence.web import openapi
from presence.web.auth import access
from presence.web.changes import ChangesApi
from presence.web.dashboard import routes as dashboard_routes
from presence.web.errors import json_errors, store_unavailable
from presence.web.queries import MAX_LOOKUP_BYTES, QueryApi
from presence.web.replies import json_reply
from presence.web.runner import WEBHOOK_PATH, WEBHOOKS
from presence.web.subscriptions import SubscriptionsApi
from presence.web.webhooks import WebhookReceiver

log = logging.getLogger("presence.web")

BACKGROUND_STOP_SECONDS = 5.0
MAX_REQUEST_LINE_BYTES = 12 * MAX_NAME_LENGTH + 4096
"""Room for ``GET .../identities/{identity}`` of the longest name, 4 UTF-8 bytes a character,
each percent-encoded: aiohttp's default of 8190 bytes refuses such a line (in plain text)."""

STORE = web.AppKey("store", PresenceStore)
SWEEPER = web.AppKey("sweeper", Sweeper)
METRICS = web.AppKey("metrics", Metrics)
HUB = web.AppKey("feed_hub", FeedHub)
ACTIVITY = web.AppKey("activity", Activity)
LEASES = web.AppKey("push_leases", Leases)
OPENAPI = web.AppKey("openapi", str)
"""The OpenAPI document of the app's routes, as ``/openapi.json`` sends it."""


def _operation(operation_id: str, summary: str, responses: openapi.Schema) -> openapi.Operation:
    return openapi.Operation(operation_id, summary, "operations", responses)


@openapi.documented(
    get=_operation(
        "healthz",
        "Liveness: 200 while the process runs",
        {"200": openapi.reply("alive", openapi.ref("Alive"))},
    )
)
async def healthz(request: web.Request) -> web.Response:
    return json_reply({"status": "ok"})


@openapi.documented(
    get=_operation(
        "readyz",
        "Readiness: 200 when Redis answers",
        {
            "200": openapi.reply("Redis answers", openapi.ref("Ready")),
            "503": openapi.response_ref("StoreUnavailable"),
        },
    )
)
async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except StoreUnavailable:
        request.app[METRICS].redis_error("readiness")
        return store_unavailable()
    return json_reply({"status": "ready"})


@openapi.documented(
    get=_operation(
        "metrics",
        "Prometheus metrics",
        {
            "200": {
                "description": f"the Prometheus text exposition format, as `{CONTENT_TYPE}`",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
)
async def serve_metrics(request: web.Request) -> web.Response:
    # The exposition content type carries its own version parameter, so it goes in as a
    # header rather than through content_type=.
    return web.Response(
        body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE}
    )


@openapi.documented(
    get=_operation(
        "openapi",
        "This document",
        {"200": openapi.reply("the OpenAPI 3.1 document", {"type": "object"})},
    )
)
async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(text=request.app[OPENAPI], content_type=JSON)


async def _run_store(app: web.Application) -> AsyncIterator[None]:
    # The storage format is made this release's before the first request (a format this
    # release must not serve stops the start); without Redis yet, on its first use instead.
    try:
        await app[STORE].prepare()
    except StoreUnavailable as error:
        log.warning("storage format not checked yet (%s): it is, once Redis answers", error)
    yield
    await app[STORE].close()


async def _close_streams(app: web.Application) -> None:
    # On shutdown, before the handlers in flight are waited for: a stream would otherwise
    # keep its handler, and the shutdown, waiting. Each client resumes by cursor elsewhere.
    # Push deliveries stop starting attempts at once too, commit, and give their leases back.
    app[LEASES].stop()
    await app[HUB].close()


async def _run_background(app: web.Application) -> AsyncIterator[None]:
    """The activity counts' flusher and the sweeper (when the app has one), for the app's
    lifetime. Both are asked to stop at once and waited for together: with Redis away, each
    waits out one Redis timeout, and the shutdown only the longer of them."""
    activity, sweeper = app[ACTIVITY], app.get(SWEEPER)
    tasks = {
        asyncio.create_task(activity.run(), name="presence-activity"): "activity counts",
        asyncio.create_task(app[LEASES].run(), name="presence-push"): "push deliveries",
    }
    if sweeper is not None:
        tasks[asyncio.create_task(sweeper.run(), name="presence-sweeper")] = "sweeper"
    yield
    # Asked to stop rather than only cancelled: redis-py can swallow a cancellation that
    # lands while it connects, which would leave this wait hanging. The activity flushes
    # once more, then returns.
    activity.stop()
    app[LEASES].stop()
    if sweeper is not None:
        sweeper.stop()
    _, late = await asyncio.wait(tasks, timeout=BACKGROUND_STOP_SECONDS)
    for task in late:
        log.warning(
            "the %s did not stop within %ss; cancelled", tasks[task], BACKGROUND_STOP_SECONDS
        )
        task.cancel()


def create_app(
    settings: Settings,
    store: PresenceStore,
    *,
    sweeper: Sweeper | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The service, answering from ``store``. A ``sweeper`` is run for the app's lifetime;
    the store is closed when the app shuts down. Metrics are the sweeper's unless given."""
    if metrics is None:
        metrics = sweeper.metrics if sweeper is not None else Metrics()
    refuse = access(settings.api_token, settings.admin_token, embedded=settings.embedded)
    answer_in_json = json_errors(metrics, refuse)
    middlewares: list[Middleware] = [answer_in_json]
    # The webhook receiver reads its body itself, within PRESENCE_MAX_BODY_BYTES; this bound is
    # for the query API, whose largest request is a lookup of 1000 long names.
    app = web.Application(
        middlewares=middlewares,
        client_max_size=MAX_LOOKUP_BYTES,
        handler_args={"max_line_size": MAX_REQUEST_LINE_BYTES},
    )
    app[STORE] = store
    app[METRICS] = metrics
    app[HUB] = FeedHub(store, metrics, max_streams=settings.max_streams, wakeups=store.published)
    app[ACTIVITY] = Activity(store)
    app[LEASES] = Leases(
        store.subscriptions,
        store,
        metrics,
        concurrency=settings.push_concurrency,
        timeout_seconds=settings.push_timeout_seconds,
        allow_private=settings.push_allow_private,
        retention_ms=store.retention_ms,
        wakeups=store.published,
    )
    app.cleanup_ctx.append(_run_store)
    app.on_shutdown.append(_close_streams)
    if sweeper is not None:
        app[SWEEPER] = sweeper
    app.cleanup_ctx.append(_run_background)
    receiver = WebhookReceiver(settings, store, metrics, app[ACTIVITY])
    app.router.add_post(WEBHOOK_PATH, receiver.handle)
    # What ServiceRunner answers webhooks with, below the router: the same handler, inside
    # the same middleware.
    webhooks: Handler = partial(answer_in_json, handler=receiver.handle)
    app[WEBHOOKS] = webhooks
    app.router.add_routes(QueryApi(store, app[ACTIVITY]).routes())
    app.router.add_routes(ChangesApi(store, app[HUB], metrics).routes())
    subscriptions = SubscriptionsApi(
        store, app[LEASES].sender, embedded=settings.embedded, changed=app[LEASES].nudge
    )
    app.router.add_routes(subscriptions.routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", serve_openapi)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_routes(dashboard_routes())
    # Built now, from the routes just added: a route without its operation stops the app here.
    app[OPENAPI] = openapi.openapi_json(app.router)
    return app
