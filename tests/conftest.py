"""Fixtures: a real redis-server for the whole run, and clients and stores on it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis, RedisCluster

from harness.processes import RedisClusterNodes, RedisServer
from presence.settings import load_settings
from presence.store.connections import open_store
from presence.store.redis import RedisStore
from presence.store.scripts import Client
from presence.sweeper import Sweeper
from presence.web.app import create_app
from tests.receiver import Receiver
from tests.support import AUTH_TOKEN, ManualClock, RunningApp, manual_clock, serve_app

# Whatever the run starts ends with it, or the run fails (harness/leaks.py).
pytest_plugins = ["harness.leaks"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the run, on a free port; never the machine's own instance."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the suite's Redis, emptied before the test."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One three-node Redis Cluster for the run (started only by the tests that use it)."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> AsyncIterator[RedisCluster]:
    """A client of the suite's Redis Cluster, every node emptied before the test."""
    redis_cluster_nodes.wait_until_ok()
    client = RedisCluster.from_url(redis_cluster_nodes.url, decode_responses=True)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


@pytest.fixture(params=["redis", "embedded", pytest.param("cluster", marks=pytest.mark.slow)])
async def backend(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Client]:
    """The same tests against a real Redis, the embedded store and a Redis Cluster."""
    client: Client
    if request.param == "redis":
        client = Redis.from_url(redis_server.url, decode_responses=True)
        await client.flushall()
    elif request.param == "cluster":
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_nodes")
        nodes.wait_until_ok()
        client = RedisCluster.from_url(nodes.url, decode_responses=True)
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return manual_clock()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, with an append-only file: the test may stop and
    restart it."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_presence_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, never from the environment the suite runs in."""
    for name in list(os.environ):
        if name.startswith("PRESENCE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def start_service(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, redis: Redis
) -> Callable[..., Awaitable[RunningApp]]:
    """Starts the service on a real HTTP server, with its own client of the suite's Redis
    (emptied first).

    Keyword arguments are settings; ``store`` replaces the store; ``sweeper=True`` runs one.
    """

    async def start(
        *,
        store: RedisStore | None = None,
        sweeper: bool = False,
        redis_url: str | None = None,
        **settings: Any,
    ) -> RunningApp:
        settings.setdefault("twilio_auth_token", AUTH_TOKEN)
        config = load_settings(redis_url=redis_url or redis_server.url, **settings)
        if store is None:
            store = open_store(config)
        app = create_app(config, store, sweeper=Sweeper(store, interval=0.05) if sweeper else None)
        return RunningApp(await serve_app(aiohttp_client, app), store)

    return start


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A push receiver of the test's own, listening (tests/receiver.py)."""
    found = await Receiver().start()
    yield found
    await found.close()
