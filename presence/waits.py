"""Waiting with a deadline without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns normally when its task is cancelled in the same
turn of the loop as what it waits for completes: the cancellation is lost
(python/cpython#86296; 3.12 builds ``wait_for`` on ``asyncio.timeout``, which has no such
race). A loop that waits so between its steps goes on as if never cancelled, so the service
waits with ``set_within`` (ruff bans ``asyncio.wait_for``). redis-py writes each command
through ``wait_for`` when a socket timeout is set, so the same can happen inside any Redis
call: a task that must end is also asked to (a flag or an event it checks), as the push
deliveries, the feed's readers and the background tasks are."""

from __future__ import annotations

import asyncio
import contextlib


async def set_within(event: asyncio.Event, seconds: float | None) -> bool:
    """Waits until ``event`` is set, for at most ``seconds``; whether it is set."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
    return event.is_set()
