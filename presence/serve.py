"""``presence serve``: runs the service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from presence.logs import ACCESS_LOGGER, AccessLogger
from presence.metrics import Metrics
from presence.settings import Settings
from presence.store.base import Migration
from presence.store.connections import open_store, without_password
from presence.store.migrate import FormatError
from presence.sweeper import Sweeper
from presence.web.app import create_app
from presence.web.runner import ServiceRunner

log = logging.getLogger("presence")

T = TypeVar("T")

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between the garbage collector's youngest rounds (Python's default: 700)."""


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` on uvloop, the faster event loop, where it is installed (not on
    Windows), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


class StartupError(Exception):
    """The host and port cannot be listened on (taken, or not an address of this machine)."""


def _announce(settings: Settings) -> None:
    if settings.embedded:
        log.warning(
            "using the embedded store (an in-process Redis emulation): presence is lost when "
            "the process exits and is not shared with other replicas; set PRESENCE_REDIS_URL "
            "for production"
        )
    elif settings.redis_sentinels:
        log.info(
            "using the Redis master %r that the Sentinels at %s name",
            settings.redis_sentinel_master,
            ",".join(f"{host}:{port}" for host, port in settings.redis_sentinels),
        )
    else:
        kind = "a Redis Cluster through" if settings.redis_cluster else "Redis at"
        log.info("using %s %s", kind, without_password(settings.redis_url or ""))
    if settings.redis_wait_replicas:
        log.info(
            "every write waits for %d replica(s), %d ms at most (else 503)",
            settings.redis_wait_replicas,
            settings.redis_wait_timeout_ms,
        )
    if settings.unsigned_webhooks:
        log.warning(
            "!!! WEBHOOK SIGNATURES ARE NOT CHECKED: anyone who can reach this port can set "
            "presence. Set PRESENCE_TWILIO_AUTH_TOKEN before exposing it. !!!"
        )


async def migrate_store(settings: Settings) -> Migration:
    """``presence migrate``: moves whatever format-1 keys Redis holds into this format."""
    store = open_store(settings)
    try:
        return await store.migrate()
    finally:
        await store.close()


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """Serves HTTP on ``settings.host``:``settings.port`` until SIGTERM or SIGINT, then shuts
    down gracefully: no new connections, requests in flight finished (within
    ``settings.shutdown_timeout_seconds``), the sweeper stopped, Redis closed.

    ``reuse_port`` lets the workers of ``presence serve --workers N`` share the port."""
    _announce(settings)
    metrics = Metrics()
    store = open_store(settings, on_failover=metrics.failover_seen)
    sweeper = Sweeper(store, metrics=metrics)  # its metrics become the app's
    app = create_app(settings, store, sweeper=sweeper)
    runner = ServiceRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger(ACCESS_LOGGER),
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    try:
        await runner.setup()
    except FormatError as error:
        raise StartupError(str(error)) from None
    # The handler only sets an event: everything else happens in order, below.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port} (PRESENCE_HOST, "
                f"PRESENCE_PORT): {error.strerror or error}"
            ) from None
        for address in runner.addresses:
            log.info("listening on http://%s:%d", address[0], address[1])
        # What starting made (modules, the app, its routes, schemas and scripts) lives as long
        # as the process: frozen out of the garbage collector's rounds, which would otherwise
        # walk it again and again (about 8% of a webhook's CPU: docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        # A request's objects are freed by their counts as soon as it is answered; the
        # collector's youngest round, every 700 allocations by default, mostly walks the
        # requests still in flight. Rarer rounds cost 2% of a webhook's instructions less,
        # 4% of a lookup's, 6% of a GET's (docs/benchmarks.md).
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        await stop.wait()
        log.info(
            "stopping: no new connections; finishing the requests in flight (at most %gs)",
            settings.shutdown_timeout_seconds,
        )
    finally:
        # Closes the listener, waits for the handlers in flight, then stops the sweeper and
        # closes Redis (the app's cleanup contexts), in that order.
        await runner.cleanup()
    log.info("stopped")
