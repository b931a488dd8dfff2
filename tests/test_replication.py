"""Waiting for replicas (PRESENCE_REDIS_WAIT_REPLICAS, ``presence/store/replication.py``), on
real redis-servers: a write no replica confirms in time is a 503 that Twilio's retry can
safely repeat, a duplicate waits for the state it read, and a firing is published anyway."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from harness.processes import RedisSentinels
from presence.events import ReachabilityEvent, parse_event
from presence.keys import BUCKETS, Keyspace, barrier_beside
from presence.model import Outcome, ReplicasBehind
from presence.store.connections import redis_client
from presence.store.redis import RedisStore
from presence.store.replication import ReplicaWait
from presence.sweeper import Sweeper
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import ManualClock, RunningApp, make_store, wait_until

Start = Callable[..., Awaitable[RunningApp]]

KEYS = Keyspace()


def event(identity: str, event_id: int, connected: bool) -> ReachabilityEvent:
    parsed = parse_event(
        reachability(identity, "E1", event_id, connected, connected=connected).items()
    )
    assert isinstance(parsed, ReachabilityEvent)
    return parsed


def waiting_store(client: Redis, timeout_ms: int, clock: ManualClock | None = None) -> RedisStore:
    return RedisStore(
        client,
        KEYS,
        offline_grace_ms=1000,
        endpoint_ttl_ms=7_200_000,
        clock=clock,
        wait=ReplicaWait(1, timeout_ms),
    )


def test_the_barrier_is_in_the_bucket_of_the_calls_keys() -> None:
    wait = ReplicaWait(1, 100)
    for bucket in (0, 17, BUCKETS - 1):
        page = KEYS.page(bucket, SERVICE_SID, 3)
        assert barrier_beside(page) == KEYS.barrier(bucket)
        assert wait.commands([[], [page, KEYS.counters(bucket, SERVICE_SID)]]) == [
            ("SET", KEYS.barrier(bucket), "1"),
            ("WAIT", 1, 100),
        ]
    # Calls without keys store nothing: a WAIT alone, behind a PING that takes its place.
    assert wait.commands([[]]) == [("PING",), ("WAIT", 1, 100)]


def test_a_wait_that_fell_short_fails_every_reply_but_the_errors() -> None:
    wait = ReplicaWait(2, 100)
    refused = ValueError("a script error")
    assert wait.settle(["a", refused, "OK", 2]) == ["a", refused]
    settled = wait.settle(["a", refused, "OK", 1])
    assert settled[1] is refused
    assert isinstance(settled[0], ReplicasBehind)
    assert settled[0].reply == "a"
    assert "1 of 2 replicas" in str(settled[0])


async def test_without_a_replica_to_confirm_it_a_webhook_is_503_and_so_is_its_retry(
    start_service: Start,
) -> None:
    app = await start_service(redis_wait_replicas=1, redis_wait_timeout_ms=100)
    params = reachability("alice", "E1", 1, True, connected=True)
    for _ in range(2):
        started = time.monotonic()
        response = await app.post_signed(params)
        elapsed = time.monotonic() - started
        assert response.status == 503
        assert (await response.json())["error"] == "store_unavailable"
        # Once the WAIT's 100 ms are over, at most two WAITs (the batch ahead, its own).
        assert 0.1 <= elapsed < 1.0
    # Applied on the master all the same, once: the retry found it done.
    state = await app.store.identity(SERVICE_SID, "alice")
    assert (state.online, state.endpoints, state.version) == (True, ("E1",), 1)
    metrics = await (await app.client.get("/metrics")).text()
    assert 'presence_redis_wait_timeouts_total{operation="webhook"} 2.0' in metrics


@pytest.fixture
def master_and_replica(tmp_path: Path) -> Iterator[RedisSentinels]:
    """A master and one replica (no Sentinels)."""
    group = RedisSentinels(tmp_path / "redis", replica_count=1, sentinel_count=0)
    try:
        yield group.start()
    finally:
        group.stop()


async def test_a_duplicate_waits_until_a_replica_holds_the_state_it_was_read_from(
    master_and_replica: RedisSentinels,
) -> None:
    """The first delivery's write is on the master only (its replica frozen). A second
    delivery, answered duplicate from that state, waits for it too, else a 200 now could be
    lost with the master. Redis 7.2 and later (and Valkey) move a connection's WAIT offset
    only when its command propagated, so the duplicate (which writes nothing) waits through
    its barrier; Redis 7.0, which the suite runs on Debian 12, moves it on any command,
    and there the test passes without the barrier too."""
    master, replica = master_and_replica.master, master_and_replica.replicas[0]
    first = make_store(Redis.from_url(master.url, decode_responses=True), None)
    second = waiting_store(redis_client(master.url), timeout_ms=300)
    alice = event("alice", 1, True)
    try:
        # The second store's connection is up and has written (and been confirmed) first.
        # The replica may take longer than the 300 ms this store waits on a busy machine
        # (the whole suite on two cores): the same delivery again until it is confirmed.
        warm: list[str] = []

        async def confirmed() -> bool:
            try:
                warm.append((await second.apply_reachability(event("warm", 1, True))).outcome)
            except ReplicasBehind as unconfirmed:
                warm.append(unconfirmed.reply[0])
                return False
            return True

        await wait_until(confirmed, 15, "the replica to confirm a first write")
        assert warm[0] == "applied"
        replica.pause()
        try:
            assert (await first.apply_reachability(alice)).outcome is Outcome.APPLIED
            started = time.monotonic()
            with pytest.raises(ReplicasBehind) as behind:
                await second.apply_reachability(alice)
            assert behind.value.reply[0] == "duplicate"
            assert time.monotonic() - started >= 0.3
        finally:
            replica.resume()
        # The replica catches up: the same delivery is answered duplicate, and confirmed.
        assert (await second.apply_reachability(alice)).outcome is Outcome.DUPLICATE
        on_replica = make_store(Redis.from_url(replica.url, decode_responses=True), None)
        state = await on_replica.identity(SERVICE_SID, "alice")
        assert (state.online, state.version) == (True, 1)
        await on_replica.close()
    finally:
        await first.close()
        await second.close()


async def test_a_firing_no_replica_confirmed_is_published_and_counted(
    redis: Redis, clock: ManualClock
) -> None:
    plain = make_store(redis, clock, grace=1)
    for step in (event("bob", 1, True), event("bob", 2, False)):
        await plain.apply_reachability(step)
    clock.advance(2)
    sweeper = Sweeper(waiting_store(redis, timeout_ms=50, clock=clock))

    await sweeper.sweep_once()

    metrics = sweeper.metrics.exposition().decode()
    assert 'presence_redis_wait_timeouts_total{operation="sweep"} 1.0' in metrics
    assert 'presence_changes_published_total{reason="disconnected"} 1.0' in metrics
    state = await plain.identity(SERVICE_SID, "bob")
    assert (state.online, state.version) == (False, 2)
