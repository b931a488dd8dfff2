"""The sweeper on a real Redis and the Redis server's clock: deadlines fire once, whoever sweeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.keys import BUCKETS, page_member
from presence.model import SweepResult
from presence.store.redis import RedisStore
from presence.sweeper import Sweeper
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import ChangeRecorder, ManualClock, make_store, wait_until


async def apply(store: RedisStore, identity: str, event_id: int, *, connected: bool) -> None:
    params = reachability(identity, "E1", event_id, connected, connected=connected)
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    await store.apply_reachability(event)


@contextlib.asynccontextmanager
async def sweeping(*stores: RedisStore, interval: float = 0.02) -> AsyncIterator[None]:
    sweepers = [Sweeper(store, interval=interval, batch=200) for store in stores]
    tasks = [asyncio.create_task(sweeper.run()) for sweeper in sweepers]
    try:
        yield
    finally:
        for sweeper in sweepers:
            sweeper.stop()
        await asyncio.gather(*tasks)


async def test_two_replicas_publish_each_offline_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    replicas = [
        make_store(Redis.from_url(redis_server.url, decode_responses=True), None, grace=0.3)
        for _ in range(2)
    ]
    names = [f"user-{n}" for n in range(300)]
    async with ChangeRecorder(redis) as recorder:
        for n, name in enumerate(names):
            await apply(replicas[n % 2], name, 1, connected=True)
            await apply(replicas[(n + 1) % 2], name, 2, connected=False)
        async with sweeping(*replicas):
            await recorder.wait_for(600)
            # Both sweepers keep going well past every deadline.
            await asyncio.sleep(0.3)
            published = await recorder.sync()

    offline = [m["identity"] for m in published if not m["online"]]
    assert sorted(offline) == sorted(names)
    assert all(m["version"] == 2 for m in published if not m["online"])
    for store in replicas:
        await store.close()


async def test_a_burst_of_deadlines_due_together_all_fire_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    store = make_store(Redis.from_url(redis_server.url, decode_responses=True), None, grace=0.2)
    count = 2500
    async with ChangeRecorder(redis) as recorder:
        for n in range(count):
            await apply(store, f"u{n}", 1, connected=True)
            await apply(store, f"u{n}", 2, connected=False)
        async with sweeping(store):
            await recorder.wait_for(2 * count, within=30)
            await asyncio.sleep(0.2)
            published = await recorder.sync()

    assert len(published) == 2 * count
    stats = await store.stats(SERVICE_SID)
    assert (stats.online, stats.pending_offline) == (0, 0)
    await store.close()


async def test_the_sweeper_rides_out_a_redis_outage(private_redis: RedisServer) -> None:
    store = make_store(Redis.from_url(private_redis.url, decode_responses=True), None, grace=0.5)
    await apply(store, "alice", 1, connected=True)
    await apply(store, "alice", 2, connected=False)

    async with sweeping(store):
        private_redis.stop()
        await asyncio.sleep(1.0)  # the deadline passes while Redis is away
        private_redis.start()

        async def fired() -> bool:
            return (await store.identity(SERVICE_SID, "alice")).version == 2

        await wait_until(fired, 10, "the offline to fire after Redis came back")
        state = await store.identity(SERVICE_SID, "alice")
        assert not state.online
        assert not state.pending_offline
    await store.close()


async def test_a_stopped_sweeper_returns_promptly_even_mid_pass(redis_server: RedisServer) -> None:
    for delay in (0, 0.0005, 0.002, 0.01):
        store = make_store(Redis.from_url(redis_server.url), None)
        sweeper = Sweeper(store, interval=10)
        task = asyncio.create_task(sweeper.run())
        await asyncio.sleep(delay)
        sweeper.stop()
        await asyncio.wait_for(task, 2)
        await store.close()


async def test_a_sweep_says_when_more_are_due(backend: Redis, clock: ManualClock) -> None:
    store = make_store(backend, clock, grace=1)
    for n in range(300):
        await apply(store, f"u{n}", 1, connected=True)
        await apply(store, f"u{n}", 2, connected=False)
    clock.advance(1)

    passes = [await store.sweep(BUCKETS)]
    while passes[-1].more:
        passes.append(await store.sweep(BUCKETS))

    # One identity per bucket per pass: several passes, the first of them told to go on.
    assert len(passes) > 2
    assert passes[0].more
    fired = [change.identity for result in passes for change in result.changes]
    assert sorted(fired) == sorted(f"u{n}" for n in range(300))
    assert not (await store.sweep(BUCKETS)).changes


async def zadd_calls(redis: Redis) -> int:
    """The ZADDs Redis has run, scripts' own included."""
    stats = await redis.info("commandstats")
    return int(stats["cmdstat_zadd"]["calls"])


async def test_a_reconnect_that_ends_a_pending_offline_leaves_the_due_pages_alone(
    redis: Redis, clock: ManualClock
) -> None:
    """A page is due no later than any identity of it. A flap's reconnect moves its identity's
    due later (from the grace deadline to the TTL after it), which cannot move the page's: no
    ZADD. The page comes due at the deadline, fires nothing, and is put at what is left."""
    store = make_store(redis, clock, grace=5, ttl=60)
    await apply(store, "alice", 1, connected=True)
    await apply(store, "alice", 2, connected=False)
    bucket, page = store.keys.place_of(SERVICE_SID, "alice")
    due_pages, member = store.keys.due_pages(bucket), page_member(SERVICE_SID, page)
    deadline = await redis.zscore(due_pages, member)
    assert deadline is not None
    zadds = await zadd_calls(redis)

    clock.advance(1)
    await apply(store, "alice", 3, connected=True)

    assert await zadd_calls(redis) == zadds
    assert await redis.zscore(due_pages, member) == deadline
    clock.advance(4)
    assert not (await store.sweep(BUCKETS)).changes
    # Due the TTL after her reconnect, a second after the disconnect: 5 s before the deadline.
    assert await redis.zscore(due_pages, member) == deadline - 4_000 + 60_000


class BrokenOnce:
    """A real store whose first sweep fails with an unexpected error."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.failures = 0

    async def sweep(self, limit: int) -> SweepResult:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("a bug in a sweep")
        return await self.store.sweep(limit)


async def test_the_sweeper_outlives_an_unexpected_error(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(Redis.from_url(redis_server.url, decode_responses=True), None, grace=0.1)
    await apply(store, "alice", 1, connected=True)
    await apply(store, "alice", 2, connected=False)
    flaky = BrokenOnce(store)
    sweeper = Sweeper(flaky, interval=0.02)  # type: ignore[arg-type]
    task = asyncio.create_task(sweeper.run())

    async def fired() -> bool:
        return (await store.identity(SERVICE_SID, "alice")).version == 2

    await wait_until(fired, 5, "the offline after the sweeper's error")
    sweeper.stop()
    await task
    assert flaky.failures == 1
    assert "a bug in a sweep" in caplog.text
    await store.close()
