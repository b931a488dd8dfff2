"""Work spread over the primaries of a Redis Cluster: each gets the part its slots serve, all
at once, and a node that cannot be reached fails only its own part."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import SlotNotCoveredError

T = TypeVar("T")

log = logging.getLogger("presence.store")

REFRESH_SECONDS = 0.5
"""While a node is down, the cluster's layout is asked for again at most this often (the
client's ``topology_refresh_min_interval``: requests in between are collapsed into one)."""


def node_failed(cluster: RedisCluster, node: ClusterNode) -> None:
    """What redis-py does when a command meets a connection error, for a pipeline of ours:
    the node goes last (so it is not picked as the node that answers COMMAND when the
    client starts over, which would fail every call), and the client asks the cluster for
    its layout again before its next command once ``REFRESH_SECONDS`` have passed since the
    last time (a replica that took over is found so)."""
    cluster.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
    cluster._initialize = True


Group = tuple[ClusterNode, list[int]]
"""A primary, and the positions of the items it serves."""


def node_of(cluster: RedisCluster, keys: Sequence[str]) -> ClusterNode:
    """The primary serving the slot of ``keys`` (any primary for an item without keys)."""
    node = cluster.get_random_primary_node() if not keys else cluster.get_node_from_key(keys[0])
    if node is None:
        raise SlotNotCoveredError(f"no node of the Redis Cluster serves the slot of {keys[0]!r}")
    return node


def by_node(cluster: RedisCluster, keys: Sequence[Sequence[str]]) -> list[Group]:
    """Items, given by their keys (all in one slot each), grouped by the primary serving them."""
    groups: dict[str, Group] = {}
    for position, item_keys in enumerate(keys):
        node = node_of(cluster, item_keys)
        groups.setdefault(node.name, (node, []))[1].append(position)
    return list(groups.values())


async def on_each_node(
    groups: Sequence[Group], work: Callable[[ClusterNode, list[int]], Awaitable[T]]
) -> list[T | Exception]:
    """``work`` for every group at once; each group's result, or the error it met. A
    cancellation (or another BaseException) is raised."""
    outcomes = await asyncio.gather(
        *(work(node, members) for node, members in groups), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return outcomes  # type: ignore[return-value]


class Promotions:
    """Notices replicas of a Redis Cluster becoming primaries (a failover), in the cluster
    client's view of its nodes, which the client refreshes after an error."""

    def __init__(self, on_failover: Callable[[], None] | None = None) -> None:
        self.on_failover = on_failover
        self._replicas: set[str] = set()

    def check(self, cluster: RedisCluster) -> None:
        for name in sorted({node.name for node in cluster.get_primaries()} & self._replicas):
            log.warning("Redis failed over: replica %s of the Redis Cluster is a primary now", name)
            if self.on_failover is not None:
                self.on_failover()
        self._replicas = {node.name for node in cluster.get_replicas()}
