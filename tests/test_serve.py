"""``presence serve`` run in this process: what it does once it listens."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Iterator

import aiohttp
import pytest

from harness.processes import free_port
from presence.serve import YOUNG_COLLECTION_THRESHOLD, serve
from presence.settings import Settings
from tests.support import wait_until


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it was
    gc.set_threshold(*threshold)


async def test_what_starting_made_is_frozen_out_of_the_collectors_rounds(
    unfrozen: None,
) -> None:
    port = free_port()
    settings = Settings(port=port)  # the embedded store
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] < YOUNG_COLLECTION_THRESHOLD
    serving = asyncio.create_task(serve(settings))

    async def listening() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as reply,
            ):
                return reply.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_until(listening, 20, "the service to listen")
        await wait_until(lambda: gc.get_freeze_count() > 0, 5, "the objects frozen")
        # The modules and the app, not a handful of objects made last.
        assert gc.get_freeze_count() > 10_000
        # And the youngest round made rarer.
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
    finally:
        signal.raise_signal(signal.SIGTERM)  # serve's own handler: a graceful stop
        await asyncio.wait_for(serving, 30)
