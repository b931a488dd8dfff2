"""The operations on identities run as Redis functions of one library (store/scripts.py): the
library is loaded again wherever Redis has lost it (a restart without persistence, a flush,
a Redis Cluster node that restarted or never had it), its name follows its code, and the
embedded store falls back to scripts where its fakeredis has no functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from harness.processes import RedisClusterNodes, RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.store import scripts
from presence.store.connections import redis_client
from presence.store.redis import RedisStore
from presence.store.scripts import OPERATIONS, Client, Function, Library, Routine, Script
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import ManualClock, make_store, wait_until
from tests.test_cluster import node_port


async def libraries(client: Redis | RedisCluster, **target: object) -> set[str]:
    """The names of the libraries loaded (on ``target_nodes`` of a cluster)."""
    listed = await client.execute_command("FUNCTION LIST", **target)
    if isinstance(listed, dict):  # a cluster's answer, by node
        (listed,) = listed.values()
    return {
        str(dict(zip(entry[::2], entry[1::2], strict=True))["library_name"]) for entry in listed
    }


def event_of(identity: str, event_id: int, *, connected: bool) -> ReachabilityEvent:
    params = reachability(identity, "E1", event_id, connected, connected=connected)
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    return event


async def exercise(store: RedisStore, clock: ManualClock, identity: str, event_id: int) -> None:
    """Every operation of the library once: a write on the pipelined path, a read, the
    listing, inspect, and a sweep that fires a deadline."""
    result = await store.apply_reachability(event_of(identity, event_id, connected=True))
    assert result.outcome.value == "applied"
    (presence,) = await store.lookup(SERVICE_SID, [identity])
    assert presence.online
    assert presence.last_event_id == event_id
    assert (await store.inspect(SERVICE_SID, identity)).where == "page"
    page = await store.online(SERVICE_SID, limit=1000, cursor=None)
    assert identity in page.identities
    await store.apply_reachability(event_of(identity, event_id + 1, connected=False))
    clock.advance(11)  # past the grace
    swept = await store.sweep(128)
    assert [(c.identity, c.online) for c in swept.changes] == [(identity, False)]


async def test_the_library_is_loaded_again_after_a_restart_without_persistence(
    tmp_path: Path, clock: ManualClock
) -> None:
    server = RedisServer(tmp_path / "redis").start()  # no snapshot, no append-only file
    # The service's own client: it replaces a connection the restart closed, once.
    store = make_store(redis_client(server.url), clock)
    try:
        assert store.scripts.functions
        await exercise(store, clock, "alice", 1)
        assert await libraries_of(server) == {Library().name}

        server.stop()
        server.start()  # empty: no library
        assert await libraries_of(server) == set()
        await exercise(store, clock, "bob", 2)
        assert await libraries_of(server) == {Library().name}
    finally:
        await store.close()
        server.stop()


async def libraries_of(server: RedisServer) -> set[str]:
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        return await libraries(client)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "backend", ["redis", pytest.param("cluster", marks=pytest.mark.slow)], indirect=True
)
async def test_a_flushed_library_is_loaded_again_between_calls(
    backend: Client, clock: ManualClock
) -> None:
    store = make_store(backend, clock)
    try:
        for event_id, identity in enumerate(["alice", "bob", "carol"], start=1):
            await exercise(store, clock, identity, event_id)
            # As a restart without persistence leaves it: no library, no script.
            await backend.execute_command("FUNCTION FLUSH")
            await backend.execute_command("SCRIPT FLUSH")
        # Each change made once: a refused call was made again, none twice.
        found = await store.lookup(SERVICE_SID, ["alice", "bob", "carol"])
        assert [(p.online, p.version) for p in found] == [(False, 2)] * 3
    finally:
        await store.close()


async def test_two_releases_libraries_live_side_by_side(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    """During a rolling upgrade both releases' libraries are loaded in one Redis: named by
    their code, neither replaces the other nor is called by the other release."""
    current = make_store(redis, clock)
    original = scripts.source

    def other_release(name: str) -> str:
        text = original(name)
        # Another release's rules: versions counted in twos, say.
        return text.replace("s.version = s.version + 1", "s.version = s.version + 2")

    monkeypatch.setattr(scripts, "source", other_release)
    other = make_store(redis, clock)
    monkeypatch.undo()
    try:
        assert isinstance(current.scripts.apply_event, Function)
        assert isinstance(other.scripts.apply_event, Function)
        assert current.scripts.apply_event.name != other.scripts.apply_event.name
        # Each store's change runs its own release's rules, whichever loaded first.
        for store, identity, version in ((current, "alice", 1), (other, "bob", 2),
                                         (current, "carol", 1)):  # fmt: skip
            result = await store.apply_reachability(event_of(identity, 1, connected=True))
            assert [change.version for change in result.changes] == [version]
        names = {current.scripts.apply_event.loaded_as, other.scripts.apply_event.loaded_as}
        assert await libraries(redis) == names
    finally:
        await current.close()
        await other.close()


async def test_the_embedded_store_uses_functions_when_its_fakeredis_has_them(
    clock: ManualClock,
) -> None:
    client = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    store = make_store(client, clock)
    try:
        assert store.scripts.functions
        await exercise(store, clock, "alice", 1)
        assert await libraries(client) == {Library().name}
        assert await client.script_exists(*(s.sha for s in operation_scripts())) == [False] * 6
    finally:
        await store.close()
        await client.aclose()


async def test_the_embedded_store_falls_back_to_scripts_without_functions(
    clock: ManualClock,
) -> None:
    """A fakeredis emulating Redis 6 has no FUNCTION nor FCALL: the same operations run as
    scripts (the rules in front of each)."""
    client = FakeAsyncRedis(server=FakeServer(version=(6,)), decode_responses=True)
    with pytest.raises(ResponseError, match="unknown command"):
        await client.function_list()
    store = make_store(client, clock)
    try:
        assert not store.scripts.functions
        assert all(isinstance(s, Script) for s in operations_of(store))
        for event_id, identity in enumerate(["alice", "bob"], start=1):
            await exercise(store, clock, identity, event_id)
        loaded = await client.script_exists(*(s.sha for s in operation_scripts()))
        # Each ran but migrate, which had nothing to do.
        assert loaded == [True, True, False, True, True, True]
    finally:
        await store.close()
        await client.aclose()


def operations_of(store: RedisStore) -> list[Routine]:
    s = store.scripts
    return [s.apply_event, s.fire_due, s.migrate, s.read, s.list, s.inspect]


def operation_scripts() -> list[Script]:
    """The operations as scripts, as the fallback makes them."""
    fallback = make_store(FakeAsyncRedis(server=FakeServer(version=(6,))), None)
    found = [s for s in operations_of(fallback) if isinstance(s, Script)]
    assert len(found) == len(OPERATIONS)
    return found


@pytest.mark.slow
async def test_a_cluster_node_that_restarts_or_never_had_it_gets_the_library(
    redis_cluster: RedisCluster, redis_cluster_nodes: RedisClusterNodes, clock: ManualClock
) -> None:
    for node in redis_cluster.get_primaries():
        await redis_cluster.execute_command("FUNCTION FLUSH", target_nodes=node)
    store = make_store(redis_cluster, clock)
    name = Library().name
    try:
        # One identity on one node: only that node loads the library.
        nodes: dict[int, str] = {}
        for n in range(10_000):
            nodes.setdefault(node_port(redis_cluster, f"user-{n}"), f"user-{n}")
        first, second, third = sorted(nodes)
        await exercise_one(store, nodes[first], 1)
        held = {p: name in await node_libraries(redis_cluster, p) for p in nodes}
        assert held == {first: True, second: False, third: False}
        # The others get it at their first call.
        await exercise_one(store, nodes[second], 2)
        await exercise_one(store, nodes[third], 3)
        assert all([name in await node_libraries(redis_cluster, p) for p in nodes])

        # A node that restarts (no persistence here) has lost it, and gets it again.
        redis_cluster_nodes.kill_node(second)
        redis_cluster_nodes.start_node(second)
        redis_cluster_nodes.wait_until_ok()

        async def applied_again() -> bool:
            try:
                await exercise_one(store, nodes[second], 4)
            except Exception:  # the node not yet back for this client: a 503 to Twilio
                return False
            return True

        await wait_until(applied_again, 20.0, "the restarted node to serve its identity")
        assert name in await node_libraries(redis_cluster, second)
    finally:
        await store.close()


async def exercise_one(store: RedisStore, identity: str, event_id: int) -> None:
    result = await store.apply_reachability(event_of(identity, event_id, connected=True))
    assert result.outcome.value == "applied"
    (presence,) = await store.lookup(SERVICE_SID, [identity])
    assert presence.last_event_id == event_id


async def node_libraries(cluster: RedisCluster, port: int) -> set[str]:
    node = next(n for n in cluster.get_nodes() if n.port == port)
    return await libraries(cluster, target_nodes=node)
