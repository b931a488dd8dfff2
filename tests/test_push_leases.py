"""A replica's share of the push subscriptions (``presence.push.leases``) on an event loop kept
busy, as deliveries and webhooks keep it under load: every lease is taken, and renewed, in a
few turns of the loop, not in a round trip to Redis each (a hundred leases renewed one by
one took most of their 10 s under the push benchmark, and deliveries stalled)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from redis.asyncio import Redis

from presence.push.leases import RENEW_SECONDS
from presence.push.records import MAX_SUBSCRIPTIONS
from presence.twilio.samples import SERVICE_SID
from tests.support import leases_on, make_store, wait_until
from tests.test_push_store import new

BUSY_SECONDS = 0.002
"""What each turn of the loop costs here besides its own work."""


async def test_a_hundred_leases_are_taken_and_renewed_in_a_few_turns_of_a_busy_loop(
    redis: Redis,
) -> None:
    store = make_store(redis, None)
    cursor = (await store.feed.now(SERVICE_SID)).encode()
    for n in range(MAX_SUBSCRIPTIONS):
        await store.subscriptions.create(replace(new(f"sub_{n:03d}"), cursor=cursor))
    leases = leases_on(store)
    turns = 0

    async def busy() -> None:
        nonlocal turns
        while True:
            time.sleep(BUSY_SECONDS)  # noqa: ASYNC251 (blocks the loop, as a burst of work does)
            turns += 1
            await asyncio.sleep(0)

    hog = asyncio.create_task(busy())
    running = asyncio.create_task(leases.run())
    try:
        await wait_until(lambda: len(leases.held) == MAX_SUBSCRIPTIONS, 10, "every lease taken")
        # One by one, reading the subscriptions and taking their leases is 200 round trips,
        # each at least a turn of the loop (777 turns, measured); together, a few, and the
        # wait's own polling (every 20 ms) adds up to 10.
        assert turns < 100, f"{turns} turns of the loop to take {MAX_SUBSCRIPTIONS} leases"

        taken = {key: held.renewed for key, held in leases.held.items()}
        await wait_until(
            lambda: all(held.renewed > taken[key] for key, held in leases.held.items()),
            3 * RENEW_SECONDS,
            "every lease renewed",
        )
        renewed = [held.renewed for held in leases.held.values()]
        # Renewed together: one by one, a turn of the loop (2 ms) at least between two.
        assert max(renewed) - min(renewed) < 50 * BUSY_SECONDS
        assert sorted(leases.held) == sorted(taken)  # none lost, none taken again
    finally:
        leases.stop()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 10)
        hog.cancel()
        await asyncio.gather(hog, return_exceptions=True)
