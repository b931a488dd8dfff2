"""Cancellations that must not be lost (presence.waits): a wait with a deadline, the feed's
subscribers, and a push delivery whose Redis read loses one."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from presence.feed.cursor import FeedCursor, Position
from presence.feed.hub import Closed, Subscriber
from presence.store.redis import RedisStore
from presence.twilio.samples import SERVICE_SID
from presence.waits import set_within
from tests.support import leases_on, make_store, wait_until
from tests.test_push_store import new


async def _cancelled_as_it_is_set(
    wait: Callable[[asyncio.Event], Coroutine[Any, Any, object]],
) -> bool:
    """Cancels a task waiting on an event in the same turn of the loop as the event is set:
    whether the task ended cancelled."""
    event = asyncio.Event()
    task = asyncio.create_task(wait(event))
    await asyncio.sleep(0)  # the task waits
    event.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task.cancelled()


async def test_a_cancellation_as_the_event_is_set_is_not_lost() -> None:
    assert await _cancelled_as_it_is_set(lambda event: set_within(event, 10))


async def _wait_for(event: asyncio.Event) -> bool:
    return await asyncio.wait_for(event.wait(), 10)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's wait_for has no such race")
async def test_the_same_race_loses_the_cancellation_with_asyncio_wait_for() -> None:
    # What the test above guards against: if it did not catch this, it would prove nothing.
    assert not await _cancelled_as_it_is_set(_wait_for)


async def test_it_says_whether_the_event_was_set_in_time() -> None:
    event = asyncio.Event()
    assert not await set_within(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await set_within(event, 10)
    assert await set_within(event, 0)  # set already: no wait


async def test_a_subscriber_cancelled_as_a_change_comes_stays_cancelled_and_keeps_it() -> None:
    subscriber = Subscriber("IS0", None, FeedCursor(Position(0, 0, 0), 0))
    task = asyncio.create_task(subscriber.get(10))
    await asyncio.sleep(0)
    subscriber.put(Closed("stopping"))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert await subscriber.get(0) == Closed("stopping")  # for whoever reads next
    assert await subscriber.get(0.01) is None


class _LosesCancellations:
    """The store's feed, through reads that lose a cancellation landing in them: what
    redis-py's writes can do on 3.11 (presence.waits)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.reads = 0
        self.lost = 0

    async def read_feed(self, service_sid: str, after: FeedCursor | None, **kwargs: Any) -> Any:
        self.reads += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.lost += 1  # and the read goes on, as if never cancelled
        return await self.store.read_feed(service_sid, after, **kwargs)


async def test_a_push_delivery_whose_read_loses_the_cancellation_ends_when_its_lease_goes_back(
    redis: Redis,
) -> None:
    store = make_store(redis, None)
    cursor = await store.feed.now(SERVICE_SID)
    await store.subscriptions.create(replace(new("sub_1"), cursor=cursor.encode()))
    feed = _LosesCancellations(store)
    leases = leases_on(store, feed)
    running = asyncio.create_task(leases.run())
    try:
        await wait_until(lambda: feed.reads == 1, 10, "the delivery reading")
        leases.stop()  # gives the lease back: cancels the delivery in its read
        # Without being asked to halt, the delivery would read again (for an hour here; in
        # the service, until its lease ran out, 10 s later).
        await wait_until(running.done, 5, "the leases given back")
        assert feed.lost == 1
        assert await store.subscriptions.get(SERVICE_SID, "sub_1") is not None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
