"""The Lua scripts: one per atomic operation, each registered once per client, and how they
are run (pipelined, per node on a Redis Cluster).

An operation script is sent with the rules it needs in front of it: the files of ``RULES`` in
order (each defines functions only, and names each after its twin in ``presence/rules.py``;
``codec.lua`` says how an identity is stored), then the operation itself. Every script
receives all the keys it touches in KEYS, and those keys share one hash tag, so each runs on
a single Redis Cluster slot.

On a Redis Cluster each node has a script cache of its own, emptied when the node restarts
or a replica takes over: a script refused with NOSCRIPT is loaded on the node that refused
it (not on every node, some of which may be down) and its call made again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from presence.store import resp
from presence.store.errors import closed_under_its_feet
from presence.store.nodes import by_node, node_failed, on_each_node
from presence.store.replication import ReplicaWait

Client: TypeAlias = Redis | RedisCluster
"""A client of one Redis (or the embedded one), or of a Redis Cluster."""

RULES = (
    "clock",
    "codec",
    "state",
    "publish",
    "endpoints",
    "ordering",
    "expiry",
    "deadline",
    "flap",
)
"""The files of ``lua/`` that state the presence rules, in the order they build on each other."""


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (files("presence.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def with_codec(operation: str) -> str:
    """The script of a read: how identities are stored (``codec.lua``), then the operation
    (the rest of the rules would only cost their definitions at every call)."""
    return "\n".join([source("codec"), source(operation)])


def with_rules(operation: str) -> str:
    """The script of an operation on identities: the rules, then ``lua/<operation>.lua``."""
    return "\n".join([*(source(name) for name in RULES), source(operation)])


class Scripts:
    """The scripts, registered on one client (loaded into Redis on first use, and again
    after a Redis restart has flushed its script cache)."""

    def __init__(self, redis: Client) -> None:
        self.apply_event: AsyncScript = redis.register_script(with_rules("apply_event"))
        self.fire_due: AsyncScript = redis.register_script(with_rules("fire_due"))
        self.read: AsyncScript = redis.register_script(with_codec("read"))
        self.list: AsyncScript = redis.register_script(with_codec("list"))
        self.inspect: AsyncScript = redis.register_script(with_codec("inspect"))
        self.migrate: AsyncScript = redis.register_script(with_rules("migrate"))
        self.record: AsyncScript = redis.register_script(source("record"))
        # Push subscriptions (store/push.py): one script per operation.
        self.push_create: AsyncScript = redis.register_script(source("push_create"))
        self.push_update: AsyncScript = redis.register_script(source("push_update"))
        self.push_rotate: AsyncScript = redis.register_script(source("push_rotate"))
        self.push_delete: AsyncScript = redis.register_script(source("push_delete"))
        self.push_acquire: AsyncScript = redis.register_script(source("push_acquire"))
        self.push_renew: AsyncScript = redis.register_script(source("push_renew"))
        self.push_release: AsyncScript = redis.register_script(source("push_release"))
        self.push_commit: AsyncScript = redis.register_script(source("push_commit"))


@dataclass(frozen=True)
class ScriptCall:
    """One call of a script: its KEYS (all in one hash slot) and ARGV."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[str | int]


async def load_script(client: Client, script: AsyncScript, node: ClusterNode | None) -> None:
    """Loads ``script`` into the script cache of ``node`` (of the one Redis without a node)."""
    if node is None:
        await client.script_load(script.script)
    else:
        await client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)


async def _pipelined(
    client: Client,
    node: ClusterNode | None,
    calls: Sequence[ScriptCall],
    wait: ReplicaWait | None = None,
) -> list[Any]:
    # With a wait, the barrier and WAIT go last on the same connection (replication.py).
    extra = wait.commands([call.keys for call in calls]) if wait is not None else []
    if node is None and isinstance(client, Redis) and resp.supported(client):
        commands = [
            resp.pack(("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args))
            for call in calls
        ]
        sent = await resp.execute(client, commands + [resp.pack(c) for c in extra])
        return sent if wait is None else wait.settle(sent)
    # EVALSHA by name: a cluster pipeline refuses its evalsha() method, but routes the raw
    # command by its keys like any other; and redis-py's Script in a single-Redis pipeline
    # would ask SCRIPT EXISTS before every pipeline, a second round trip.
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            command = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            if node is not None and not call.keys:
                # A call without keys could run on any node: on the one it was grouped
                # with, where its script is loaded if missing.
                pipe.execute_command(*command, target_nodes=node)
            else:
                pipe.execute_command(*command)
        for command in extra:
            # The barrier is routed by its key, to this node (it is beside a call's key);
            # WAIT has none: it is sent to the node, on the connection of the calls.
            if node is not None and command[0] != "SET":
                pipe.execute_command(*command, target_nodes=node)
            else:
                pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies if wait is None else wait.settle(replies)


async def _run_on_node(
    client: Client,
    node: ClusterNode | None,
    calls: Sequence[ScriptCall],
    wait: ReplicaWait | None = None,
) -> list[Any]:
    replies = await _pipelined(client, node, calls, wait)
    unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if unknown:
        # A node that restarted (or a replica that took over) has forgotten the scripts:
        # the calls it refused did not run, so they are simply made again.
        for script in {id(calls[i].script): calls[i].script for i in unknown}.values():
            await load_script(client, script, node)
        again = await _pipelined(client, node, [calls[i] for i in unknown], wait)
        for i, reply in zip(unknown, again, strict=True):
            replies[i] = reply
    return replies


async def _run_on_cluster_node(
    client: Client, node: ClusterNode, calls: Sequence[ScriptCall], wait: ReplicaWait | None
) -> list[Any]:
    try:
        return await _run_on_node(client, node, calls, wait)
    except RedisConnectionError:
        # The node is down, or a replica has taken over from it.
        assert isinstance(client, RedisCluster)
        node_failed(client, node)
        raise
    except (AttributeError, TypeError, RuntimeError) as error:
        if not closed_under_its_feet(error):
            raise
        # redis-py's cluster client can still close the connections of every node, those
        # in use too, when it starts over after a CLUSTERDOWN (redis/redis-py#3546): one
        # more try, on a fresh connection. A call that did run answers duplicate or stale
        # the second time, so nothing is applied twice.
        return await _run_on_node(client, node, calls, wait)


async def run_scripts(
    client: Client, calls: Sequence[ScriptCall], wait: ReplicaWait | None = None
) -> list[Any]:
    """Runs ``calls`` in pipelines, one per node; returns each call's reply, or the error
    it met, in order. With ``wait``, each pipeline ends with a WAIT for replicas, and the
    replies of a node whose replicas fell short are ``ReplicasBehind`` errors.

    On a Redis Cluster the nodes are sent their calls concurrently, and a node that cannot
    be reached fails only its own calls (their results are its error): the others' calls
    run. On one Redis an unreachable Redis raises."""
    if not calls:
        return []
    if not isinstance(client, RedisCluster):
        return await _run_on_node(client, None, calls, wait)
    await client.initialize()
    groups = by_node(client, [call.keys for call in calls])

    async def run(node: ClusterNode, members: list[int]) -> list[Any]:
        return await _run_on_cluster_node(client, node, [calls[i] for i in members], wait)

    results: list[Any] = [None] * len(calls)
    for (_, members), outcome in zip(groups, await on_each_node(groups, run), strict=True):
        for position, i in enumerate(members):
            results[i] = outcome if isinstance(outcome, Exception) else outcome[position]
    return results
