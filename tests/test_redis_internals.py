"""What presence relies on inside redis-py beyond its public API, pinned one by one, so that a
refresh of the lock (scripts/lock) that changes any of it fails here, by name, rather than
somewhere deep in a webhook's path. docs/development.md lists the same parts.

- ``presence/store/pipe.py`` writes packed commands straight to a connection's
  ``_writer`` (an ``asyncio.StreamWriter``) and reads replies from its ``_reader`` (an
  ``asyncio.StreamReader``) with a hiredis reader whose error replies are made by
  ``redis._parsers.base.BaseParser.parse_error``;
- ``presence/store/nodes.py`` sets a ``RedisCluster``'s ``_initialize`` to make it ask the
  cluster for its layout before its next command (once the client's
  ``topology_refresh_min_interval``, new in redis-py 8.2, has passed), and moves a failed
  node last with ``nodes_manager.move_node_to_end_of_cached_nodes``;
- ``presence/store/sentinel.py`` overrides ``SentinelConnectionPool.get_master_address``,
  which every new connection of the pool awaits, and closes ``sentinel_manager``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.cluster import NodesManager
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from harness.processes import RedisClusterNodes, RedisServer
from presence.store.connections import cluster_client
from presence.store.nodes import REFRESH_SECONDS
from presence.store.resp import pack
from presence.store.scripts import Function, Library


async def test_a_pooled_connection_exposes_its_stream_writer_and_reader(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    pool = client.connection_pool
    connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.connect()  # type: ignore[no-untyped-call]
        writer, reader = connection._writer, connection._reader
        assert isinstance(writer, asyncio.StreamWriter)
        assert isinstance(reader, asyncio.StreamReader)
        # What the pipe does: several commands written at once, replies read as they come.
        writer.writelines([pack(["SET", "internals", "1"]), pack(["GET", "internals"])])
        assert await asyncio.wait_for(reader.readexactly(len(b"+OK\r\n$1\r\n1\r\n")), 5) == (
            b"+OK\r\n$1\r\n1\r\n"
        )
        assert connection.encoder.decode_responses is True
        assert (connection.encoder.encoding, connection.encoder.encoding_errors) == (
            "utf-8",
            "strict",
        )
    finally:
        await connection.disconnect(nowait=True)
        await pool.release(connection)
        await client.aclose()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("READONLY You can't write against a read only replica.", ReadOnlyError),
        ("NOSCRIPT No matching script. Please use EVAL.", NoScriptError),
        ("ERR unknown command 'X'", ResponseError),
    ],
)
def test_the_parser_makes_the_exceptions_redis_py_raises(
    reply: str, kind: type[ResponseError]
) -> None:
    error = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    assert type(error) is kind


def test_a_function_redis_lost_and_a_library_loaded_twice_are_told_by_their_text() -> None:
    """Redis gives them no error type of their own: the store knows them by what redis-py
    leaves of Redis' text (scripts.py, Function)."""
    function = Function(Library(), "apply_event")
    lost = BaseParser.parse_error("ERR Function not found")  # type: ignore[no-untyped-call]
    twice = BaseParser.parse_error(  # type: ignore[no-untyped-call]
        f"ERR Library '{function.loaded_as}' already exists"
    )
    other = BaseParser.parse_error("ERR Error compiling function")  # type: ignore[no-untyped-call]
    assert (function.unknown(lost), function.unknown(twice), function.unknown(other)) == (
        True,
        False,
        False,
    )
    assert (function.there(twice), function.there(other), function.there("OK")) == (
        True,
        False,
        True,
    )


@pytest.mark.slow
async def test_a_cluster_asked_to_initialize_asks_for_its_layout_again_once_due(
    redis_cluster_nodes: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``node_failed`` sets ``_initialize``; redis-py runs the refresh it asks for on the next
    command once ``topology_refresh_min_interval`` has passed since the last one, and
    collapses the requests made in between into that one."""
    redis_cluster_nodes.wait_until_ok()
    redis_cluster = cluster_client(redis_cluster_nodes.url)
    try:
        await redis_cluster.ping()
        manager = redis_cluster.nodes_manager
        assert manager._topology_refresh_min_interval == REFRESH_SECONDS
        asked = []
        initialize = type(manager).initialize

        async def counted(self: NodesManager, *args: Any, **kwargs: Any) -> None:
            asked.append(True)
            await initialize(self, *args, **kwargs)

        monkeypatch.setattr(type(manager), "initialize", counted)
        assert redis_cluster._initialize is False
        asked_at = time.monotonic()
        redis_cluster._initialize = True
        deadline = asked_at + 5
        while not asked and time.monotonic() < deadline:
            await redis_cluster.set("internals", "1")
            redis_cluster._initialize = True  # asked again and again: still one refresh
            await asyncio.sleep(0.01)
        assert asked == [True]
        # The interval runs from the first initialization, just before the request.
        assert time.monotonic() - asked_at <= REFRESH_SECONDS + 1
        # A node moved last is the last of the cached nodes (not asked first when starting
        # over).
        first = next(iter(manager.nodes_cache))
        manager.move_node_to_end_of_cached_nodes(first)
        assert list(manager.nodes_cache)[-1] == first
    finally:
        await redis_cluster.aclose()


def test_a_sentinel_pool_asks_for_the_master_through_the_method_presence_overrides() -> None:
    assert inspect.iscoroutinefunction(SentinelConnectionPool.get_master_address)
    source = inspect.getsource(SentinelManagedConnection)
    assert "self.connection_pool.get_master_address()" in source
    pool = SentinelConnectionPool("mymaster", Sentinel([("127.0.0.1", 1)]))  # type: ignore[no-untyped-call]
    assert isinstance(pool.sentinel_manager, Sentinel)
