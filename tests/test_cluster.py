"""The service on a Redis Cluster (PRESENCE_REDIS_CLUSTER=true): three primaries, no replicas.

The presence-rule scenarios run on the cluster too (the ``backend`` fixture); here: every
script call stays in one hash slot, ``presence serve`` answers webhooks and queries for
identities spread over every node, two replicas' sweepers fire each deadline once,
``presence watch`` prints the changes of every node, and a node that goes down costs 503s
for its own slots only, until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import pkgutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

import presence.store
from harness.processes import RedisClusterNodes, Service
from presence.events import CollectionEvent, ReachabilityEvent, parse_event
from presence.keys import BUCKETS, Keyspace
from presence.push.records import Subscription
from presence.store.scripts import Client, ScriptCall, run_scripts
from presence.twilio.samples import SERVICE_SID, collection_event, reachability
from presence.watch import watch
from tests.support import (
    AUTH_TOKEN,
    ChangeRecorder,
    json_lines,
    make_store,
    manual_clock,
    post_webhook,
    wait_until,
)

pytestmark = pytest.mark.slow  # a three-node Redis Cluster and several `presence serve` processes

KEYSPACE = Keyspace()
IDENTITIES = [f"user-{n:02}" for n in range(24)]


# Every module of presence.store that calls run_scripts (found, so that a new one is
# watched too).
SCRIPT_CALLERS = [
    info.name
    for info in pkgutil.iter_modules(presence.store.__path__)
    if info.name != "scripts"
    and hasattr(importlib.import_module(f"presence.store.{info.name}"), "run_scripts")
]


def subscription(subscription_id: str) -> Subscription:
    return Subscription(
        id=subscription_id,
        service_sid=SERVICE_SID,
        url="https://receiver.example/presence",
        description=None,
        enabled=True,
        created_at_ms=0,
        secret="whsec_a",
        cursor="",
    )


def node_port(cluster: RedisCluster, identity: str) -> int:
    """The port of the node holding ``identity``'s state."""
    bucket, page = KEYSPACE.place_of(SERVICE_SID, identity)
    node = cluster.get_node_from_key(KEYSPACE.page(bucket, SERVICE_SID, page))
    assert node is not None
    return int(node.port)


def ports_of(cluster: RedisCluster, identities: Sequence[str]) -> dict[str, int]:
    return {name: node_port(cluster, name) for name in identities}


async def test_every_script_call_stays_in_one_slot_and_calls_reach_every_node(
    redis_cluster: RedisCluster,
    redis_cluster_nodes: RedisClusterNodes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each script call's KEYS hash to one slot (else the cluster would refuse it with
    CROSSSLOT), and the calls of a varied workload land on all three nodes."""
    calls: list[Sequence[str]] = []

    async def spy_run_scripts(
        client: Client, batch: Sequence[ScriptCall], wait: Any = None
    ) -> list[Any]:
        calls.extend(list(call.keys) for call in batch)
        return await run_scripts(client, batch, wait)

    # Writes go through the coalescer, the rest straight to run_scripts: every caller of it
    # is watched.
    for module in SCRIPT_CALLERS:
        monkeypatch.setattr(f"presence.store.{module}.run_scripts", spy_run_scripts)
    clock = manual_clock()
    store = make_store(redis_cluster, clock, grace=1, ttl=60)
    for n, name in enumerate(IDENTITIES):
        for params in (
            reachability(name, "E1", 2 * n + 1, True, connected=True),
            reachability(name, "E1", 2 * n + 2, False, connected=False),
        ):
            event = parse_event(params.items())
            assert isinstance(event, ReachabilityEvent)
            assert (await store.apply_reachability(event)).outcome.value == "applied"
    for event_type in ("document_created", "list_item_added", "map_item_removed"):
        for token in (None, "tok-" + event_type):
            event = parse_event(collection_event(event_type).items())
            assert isinstance(event, CollectionEvent)
            await store.record(event, token)
    clock.advance(2)
    swept = await store.sweep(1024)
    assert len(swept.changes) == len(IDENTITIES)
    # A push subscription's life: each operation is one script on its service's slot.
    subscriptions = store.subscriptions
    await subscriptions.create(subscription("SUB1"))
    (held,) = await subscriptions.acquire([(SERVICE_SID, "SUB1")], "replica-a", 10_000)
    assert held is not None
    assert not isinstance(held, Exception)
    holder, _ = held
    (renewed,) = await subscriptions.renew([(SERVICE_SID, "SUB1", holder)], 10_000)
    assert renewed is not None
    assert not isinstance(renewed, Exception)
    assert await subscriptions.commit(SERVICE_SID, "SUB1", holder, {"failures": "0"})
    assert await subscriptions.rotate(SERVICE_SID, "SUB1", "whsec_b", 0) is not None
    assert await subscriptions.update(SERVICE_SID, "SUB1", {"description": "x"}) is not None
    await subscriptions.release(SERVICE_SID, "SUB1", holder)
    assert await subscriptions.delete(SERVICE_SID, "SUB1")

    # The sweep visits each page whose identities' deadlines are due, once; the
    # subscription took eight calls.
    pages = {KEYSPACE.place_of(SERVICE_SID, name) for name in IDENTITIES}
    assert len(calls) == 2 * len(IDENTITIES) + 6 + len(pages) + 8
    for keys in calls:
        assert len({key_slot(key.encode()) for key in keys}) <= 1, keys
    nodes = {redis_cluster.get_node_from_key(keys[0]).port for keys in calls if keys}  # type: ignore[union-attr]
    assert len(nodes) == len(redis_cluster_nodes.ports)
    # Every bucket's keys are on one slot; the 128 buckets cover every node.
    assert {
        redis_cluster.get_node_from_key(KEYSPACE.due_pages(b)).port  # type: ignore[union-attr]
        for b in range(BUCKETS)
    } == set(redis_cluster_nodes.ports)
    await store.close()


@pytest.fixture
def cluster_services(
    tmp_path: Path, redis_cluster_nodes: RedisClusterNodes
) -> Iterator[list[Service]]:
    """Two ``presence serve`` replicas on the cluster, each with its own sweeper."""
    services = [
        Service(
            tmp_path / f"serve-{n}.log",
            redis_url=redis_cluster_nodes.url,
            redis_cluster="true",
            twilio_auth_token=AUTH_TOKEN,
            offline_grace_seconds="1",
        )
        for n in range(2)
    ]
    try:
        for service in services:
            service.start()
        yield services
    finally:
        for service in services:
            service.kill()


@contextlib.asynccontextmanager
async def watching(url: str) -> AsyncIterator[io.StringIO]:
    """``presence watch`` on the cluster, in this process: its output as it grows."""
    out = io.StringIO()
    task = asyncio.create_task(watch(url, KEYSPACE, out, cluster=True))
    try:
        yield out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def watched_somewhere(cluster: RedisCluster, ports: Sequence[int]) -> bool:
    return await subscribed_node(cluster, ports) is not None


async def subscribed_node(cluster: RedisCluster, ports: Sequence[int]) -> int | None:
    """The port of the node where ``presence:changes`` has a subscriber, if any."""
    for port in ports:
        node = cluster.get_node(host="127.0.0.1", port=port)
        if node is None:
            continue
        with contextlib.suppress(Exception):
            counts = await cluster.pubsub_numsub(KEYSPACE.changes_channel, target_nodes=node)
            if counts and counts[0][1] > 0:
                return port
    return None


async def test_serve_on_a_cluster_answers_for_every_node_and_fires_each_deadline_once(
    redis_cluster: RedisCluster,
    redis_cluster_nodes: RedisClusterNodes,
    cluster_services: list[Service],
) -> None:
    ports = ports_of(redis_cluster, IDENTITIES)
    assert set(ports.values()) == set(redis_cluster_nodes.ports)  # spread over all nodes

    async with watching(redis_cluster_nodes.url) as watched:
        await wait_until(
            lambda: watched_somewhere(redis_cluster, redis_cluster_nodes.ports),
            10.0,
            "presence watch to subscribe",
        )
        async with ChangeRecorder(redis_cluster) as recorder:
            await exercise_the_service(cluster_services, recorder)
        # presence watch, subscribed on one node, printed the changes made on every node.
        await wait_until(
            lambda: len(json_lines(watched.getvalue())) >= 2 * len(IDENTITIES),
            5.0,
            "presence watch's lines",
        )
        printed = [m for m in json_lines(watched.getvalue()) if "test_marker" not in m]
        assert Counter((m["identity"], m["online"]) for m in printed) == Counter(
            (name, online) for name in IDENTITIES for online in (True, False)
        )


async def exercise_the_service(services: list[Service], recorder: ChangeRecorder) -> None:
    first, second = services
    for n, name in enumerate(IDENTITIES):
        target = (first, second)[n % 2]
        status, body = await post_webhook(
            target.url, reachability(name, "E1", 10, True, connected=True)
        )
        assert (status, body) == (200, {"status": "applied"})

    async with aiohttp.ClientSession(first.url) as http:
        base = f"/v1/services/{SERVICE_SID}"
        async with http.get(f"{base}/identities/{IDENTITIES[5]}") as response:
            one = await response.json()
        assert one["online"] is True
        assert one["endpoints"] == ["E1"]
        assert one["version"] == 1

        async with http.post(
            f"{base}/lookup", json={"identities": [*IDENTITIES, "nobody"]}
        ) as response:
            found = (await response.json())["identities"]
        assert [item["identity"] for item in found] == [*IDENTITIES, "nobody"]
        assert [item["online"] for item in found] == [True] * len(IDENTITIES) + [False]

        listed: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = {"limit": "5"} | ({"cursor": cursor} if cursor else {})
            async with http.get(f"{base}/online", params=query) as response:
                assert response.status == 200
                page = await response.json()
            listed += page["identities"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert Counter(listed) == Counter(IDENTITIES)  # each exactly once
        assert pages >= len(IDENTITIES) // 5

        async with http.get(f"{base}/stats") as response:
            stats = await response.json()
        assert stats == {
            "online": len(IDENTITIES),
            "pending_offline": 0,
            "endpoints": len(IDENTITIES),
        }

    for n, name in enumerate(IDENTITIES):
        target = (first, second)[n % 2]
        status, _ = await post_webhook(
            target.url, reachability(name, "E1", 11, False, connected=False)
        )
        assert status == 200

    # Both replicas' sweepers race for the deadlines, on every node: each fires once.
    def offline_count() -> int:
        return sum(1 for m in recorder.messages if m["online"] is False)

    await wait_until(lambda: offline_count() >= len(IDENTITIES), 10.0, "every offline")
    await asyncio.sleep(1.0)  # a second fire would have come by now
    changes = await recorder.sync()
    by_identity: dict[str, list[tuple[bool, str, int]]] = {}
    for change in changes:
        by_identity.setdefault(change["identity"], []).append(
            (change["online"], change["reason"], change["version"])
        )
    assert by_identity == {
        name: [(True, "connected", 1), (False, "disconnected", 2)] for name in IDENTITIES
    }


async def test_a_node_down_answers_503_for_its_slots_until_it_is_back(
    redis_cluster: RedisCluster,
    redis_cluster_nodes: RedisClusterNodes,
    cluster_services: list[Service],
) -> None:
    """With no replicas, a primary going down takes its slots away (the cluster runs with
    cluster-require-full-coverage no: the other slots keep working). Webhooks for its
    identities are answered 503 at once, the others 200; ``presence watch``, if it was
    subscribed there, moves to another node; once the node is back (its script cache
    empty: NOSCRIPT, reloaded), its identities work again."""
    service = cluster_services[0]
    ports = ports_of(redis_cluster, IDENTITIES)
    async with watching(redis_cluster_nodes.url) as watched:
        await wait_until(
            lambda: watched_somewhere(redis_cluster, redis_cluster_nodes.ports),
            10.0,
            "presence watch to subscribe",
        )
        # The node to stop: the one presence watch listens on.
        victim = await subscribed_node(redis_cluster, redis_cluster_nodes.ports)
        assert victim is not None
        down = [name for name in IDENTITIES if ports[name] == victim]
        up = [name for name in IDENTITIES if ports[name] != victim]
        assert down
        assert up
        for name in IDENTITIES:  # warm: every node has loaded the scripts
            status, _ = await post_webhook(
                service.url, reachability(name, "E1", 1, True, connected=True)
            )
            assert status == 200

        redis_cluster_nodes.kill_node(victim)
        try:
            for event_id, name in enumerate(down, start=2):
                started = time.monotonic()
                status, body = await post_webhook(
                    service.url, reachability(name, "E2", event_id, True, connected=True)
                )
                assert (status, body["error"]) == (503, "store_unavailable")
                assert time.monotonic() - started < 5.0
            for name in up:
                status, body = await post_webhook(
                    service.url, reachability(name, "E2", 2, True, connected=True)
                )
                assert (status, body) == (200, {"status": "applied"}), name
            # presence watch moved to a node that is up and prints what happens there.
            await wait_until(
                lambda: watched_somewhere(redis_cluster, redis_cluster_nodes.ports),
                10.0,
                "presence watch to subscribe again",
            )
            for name in up:
                status, _ = await post_webhook(
                    service.url, reachability(name, "E2", 3, False, connected=False)
                )
                assert status == 200
            # E1 is still connected: each loses one endpoint, nothing is published; so
            # drop the last endpoint too, then wait for the offline of each (grace 1 s).
            for name in up:
                status, _ = await post_webhook(
                    service.url, reachability(name, "E1", 4, False, connected=False)
                )
                assert status == 200

            def offline_printed() -> set[str]:
                return {m["identity"] for m in json_lines(watched.getvalue()) if not m["online"]}

            await wait_until(lambda: offline_printed() == set(up), 10.0, "offline of each")
        finally:
            redis_cluster_nodes.start_node(victim)
            redis_cluster_nodes.wait_until_ok()

    # Back (empty: no persistence in this test cluster): its identities work again.
    async def recovered() -> bool:
        statuses = []
        for name in down:
            status, _ = await post_webhook(
                service.url, reachability(name, "E3", 100, True, connected=True)
            )
            statuses.append(status)
        assert set(statuses) <= {200, 503}
        return set(statuses) == {200}

    await wait_until(recovered, 15.0, "the node's identities to work again")
    assert "Traceback" not in service.output()
