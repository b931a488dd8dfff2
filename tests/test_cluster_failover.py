"""A Redis Cluster with replicas (``--cluster-replicas 1``): a primary SIGKILLed under load,
its replica promoted. The same assertions as through Sentinels (tests/test_sentinel.py):
every webhook answered 200 or 503 in time; with PRESENCE_REDIS_WAIT_REPLICAS=1 nothing
answered 200 is lost (without it, the loss is measured); Twilio's retries of the 503s are
answered 200; deadlines set before the failover fire once after it; the feed says reset for
a cursor that saw what the failover lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster

from harness.processes import RedisClusterNodes, Service, redis_cli
from presence.keys import Keyspace
from presence.model import StoreUnavailable
from presence.store.connections import cluster_client
from presence.store.scripts import Library
from presence.twilio.samples import SERVICE_SID
from tests.failover import (
    BEHIND_SECONDS,
    GRACE,
    LOAD,
    FailoverRun,
    assert_every_reply_in_time,
    assert_offline_once,
    cut_off,
    deadline_identities,
    feed_cursor,
    feed_since,
    load_through_a_failover,
    lost_acknowledged,
    metric,
    set_deadlines,
    until_writes_are_acknowledged,
)
from tests.load import deliver
from tests.support import AUTH_TOKEN, ManualClock, Watcher, make_store, wait_until
from tests.test_cluster import node_port
from tests.test_faults import assert_no_crash, client_session, ready, running
from tests.test_functions import exercise_one

pytestmark = pytest.mark.slow  # six redis-servers in a cluster, two `presence serve`

KEYS = Keyspace()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """Three primaries, each with one replica, of the test's own."""
    nodes = RedisClusterNodes(tmp_path / "cluster", size=3, replicas=1)
    try:
        nodes.start()  # (every replica synced with its primary)
        yield nodes
    finally:
        nodes.stop()


async def feed_of(nodes: RedisClusterNodes, identities: list[str]) -> Counter[tuple[str, str]]:
    """(identity, online, version) of each entry of the change feed on the cluster."""
    redis = RedisCluster.from_url(nodes.url, decode_responses=True)
    found: Counter[tuple[str, str]] = Counter()
    try:
        for bucket in {KEYS.place_of(SERVICE_SID, name)[0] for name in identities}:
            entries: Any = await redis.xrange(KEYS.feed(bucket, SERVICE_SID))
            for _, entry in entries:
                if entry["i"] in identities and entry["o"] == "0":
                    found[entry["i"], entry["v"]] += 1
    finally:
        await redis.aclose()
    return found


async def held_by(nodes: RedisClusterNodes, port: int) -> set[str]:
    """The load's identities whose state the node on ``port`` holds."""
    redis = RedisCluster.from_url(nodes.url)
    try:
        await redis.initialize()
        names = [f"load-{i}" for i in range(LOAD)]
        places = {name: KEYS.place_of(SERVICE_SID, name) for name in names}
        return {
            name
            for name, (bucket, page) in places.items()
            if getattr(redis.get_node_from_key(KEYS.page(bucket, SERVICE_SID, page)), "port", 0)
            == port
        }
    finally:
        await redis.aclose()


@pytest.mark.parametrize("wait", [True, False], ids=["wait-1", "wait-0"])
@pytest.mark.parametrize("behind", [False, True], ids=["replica-in-step", "replica-behind"])
async def test_a_primary_killed_under_load_its_replica_takes_over(
    tmp_path: Path, cluster: RedisClusterNodes, wait: bool, behind: bool
) -> None:
    settings = {"redis_wait_replicas": "1", "redis_wait_timeout_ms": "300"} if wait else {}
    services = [
        Service(
            tmp_path / f"serve-{n}.log",
            redis_url=cluster.url,
            redis_cluster="true",
            twilio_auth_token=AUTH_TOKEN,
            offline_grace_seconds=GRACE,
            **settings,
        )
        for n in range(2)
    ]
    roles = cluster.roles()
    victim = next(port for port, primary in roles.items() if primary is None)
    [heir] = [port for port, primary in roles.items() if primary == victim]
    held = await held_by(cluster, victim)
    with running(*services) as started:
        async with (
            Watcher(redis_url=cluster.url, redis_cluster="true") as watcher,
            client_session() as session,
        ):
            await watcher.until_subscribed(cluster.url)
            await set_deadlines(session, started)
            await feed_cursor(session, started[0])  # the epochs are on every replica

            async def kill(run: FailoverRun) -> None:
                if behind:
                    await cut_off(victim, [lambda: cluster.pause_node(heir)])
                    await asyncio.sleep(BEHIND_SECONDS)
                    run.extra["cursor"] = await feed_cursor(session, started[0])
                run.killed_at = time.monotonic()
                await asyncio.to_thread(cluster.kill_node, victim)
                if behind:
                    cluster.resume_node(heir)

            run = await load_through_a_failover(session, started, kill)
            assert_every_reply_in_time(run)
            await wait_until(lambda: cluster.roles().get(heir, 0) is None, 30, "a promotion")
            # The failed node comes back, as a replica of its heir: with WAIT 1 the heir's
            # slots need one to acknowledge a write.
            await asyncio.to_thread(cluster.start_node, victim)
            await asyncio.to_thread(cluster.wait_until_ok)
            await asyncio.to_thread(cluster.wait_until_synced)
            await until_writes_are_acknowledged(session, started)
            lost = await lost_acknowledged(session, started[0], run)
            name = f"Redis Cluster, WAIT {'1' if wait else '0'}, " + (
                f"replica {BEHIND_SECONDS} s behind" if behind else "replica in step"
            )
            print(run.summary(name, lost, among=held))
            if wait:
                assert lost == []
            elif behind:
                assert lost

            # Twilio's retries of the 503s, until every one is answered 200 (the heir's slots
            # acknowledge writes once its new replica has synced): each applied, or found
            # done, once.
            outcomes: list[str | None] = []

            async def every_retry_acknowledged() -> bool:
                replies = await asyncio.gather(
                    *(deliver(session, started[n % 2], r.params) for n, r in enumerate(run.refused))
                )
                assert {r.status for r in replies} <= {200, 503}
                outcomes.extend(r.outcome for r in replies if r.status == 200)
                return all(r.status == 200 for r in replies)

            await wait_until(every_retry_acknowledged, 30, "every retry to be answered 200")
            assert set(outcomes) <= {"applied", "duplicate"}
            print(f"retried the 503s: {Counter(outcomes)}")

            deadlines = deadline_identities()

            async def all_fired() -> bool:
                return {name for name, _ in await feed_of(cluster, deadlines)} == set(deadlines)

            await wait_until(all_fired, float(GRACE) + 15, "every deadline to fire")
            await asyncio.sleep(1.5)  # a second firing would come by now
            assert await feed_of(cluster, deadlines) == {(name, "2"): 1 for name in deadlines}

            await assert_offline_once(watcher, deadlines, version=2)

            if behind:
                page = await feed_since(session, started[1], run.extra["cursor"])
                assert (page["reset"], page.get("reason")) == (True, "lost")
            for service in started:
                assert await ready(session, service)
            failovers = [
                await metric(session, s, "presence_redis_failovers_total") for s in started
            ]
            assert min(failovers) >= 1
        assert_no_crash(*started)


async def test_after_a_failover_the_new_primary_runs_the_library(
    cluster: RedisClusterNodes, clock: ManualClock
) -> None:
    """The replica that takes over has the library through replication; if it has not (a
    replica that never had it, here flushed), it is loaded there at its first call."""
    roles = cluster.roles()
    victim = next(port for port, primary in roles.items() if primary is None)
    [heir] = [port for port, primary in roles.items() if primary == victim]
    client = cluster_client(cluster.url)
    store = make_store(client, clock)
    try:
        await client.initialize()
        identity = next(
            f"user-{n}" for n in range(10_000) if node_port(client, f"user-{n}") == victim
        )
        await exercise_one(store, identity, 1)
        await asyncio.to_thread(cluster.wait_until_synced)
        assert await libraries_on(cluster, heir) == {Library().name}  # replicated

        await asyncio.to_thread(cluster.kill_node, victim)
        await wait_until(lambda: cluster.roles().get(heir, 0) is None, 30, "a promotion")

        async def applied(event_id: int) -> bool:
            try:
                await exercise_one(store, identity, event_id)
            except StoreUnavailable:  # the client has not found the new primary yet
                return False
            return True

        await wait_until(lambda: applied(2), 30, "the heir to apply a webhook")
        await redis_cli_async(heir, "FUNCTION", "FLUSH")
        assert await libraries_on(cluster, heir) == set()
        assert await applied(3)
        assert await libraries_on(cluster, heir) == {Library().name}
    finally:
        await store.close()


async def redis_cli_async(port: int, *args: str) -> str:
    return await asyncio.to_thread(redis_cli, port, *args)


async def libraries_on(cluster: RedisClusterNodes, port: int) -> set[str]:
    listed = await redis_cli_async(port, "FUNCTION", "LIST")
    return {
        line.strip()
        for previous, line in zip(listed.splitlines(), listed.splitlines()[1:], strict=False)
        if previous.strip() == "library_name"
    }
