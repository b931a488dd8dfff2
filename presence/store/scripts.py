"""The Lua code: one script or function per atomic operation, and how calls of them are run
(pipelined, per node on a Redis Cluster).

The operations on identities are the functions of one library (``FUNCTION LOAD``), loaded
once per Redis: the files of ``RULES`` in order (each defines functions only, and names each
after its twin in ``presence/rules.py``; ``codec.lua`` says how an identity is stored), then
the operations of ``OPERATIONS``, each registered as a function (``FCALL``). A script would
carry the rules in front of it and define them again at every call. The library and its
functions are named with a digest of their code, so two releases loaded in one Redis during
a rolling upgrade never call each other's code. The other operations (webhooks of documents
and collections, the feed's epoch, push subscriptions) need no rules: they stay scripts
(``EVALSHA``).

Where Redis has no functions (the embedded store on a fakeredis without them), the same
operations are scripts, with the rules (or the codec alone, for the reads) in front of each.

Every call receives all the keys it touches in KEYS, and those keys share one hash tag, so
each runs on a single Redis Cluster slot.

A Redis forgets scripts when it restarts, and functions when it restarts without persistence;
on a Redis Cluster each node has its own, and a replica that takes over may not have them
all. A call refused for that (NOSCRIPT, "Function not found") did not run: what it needs is
loaded on the node that refused it (not on every node, some of which may be down) and the
call made again.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, NamedTuple, TypeAlias

from fakeredis.commands_mixins import scripting_mixin
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

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

OPERATIONS = {
    "apply_event": "writes",
    "fire_due": "writes",
    "migrate": "writes",
    "read": "reads",
    "list": "reads",
    "inspect": "reads",
}
"""The operations on identities (``lua/<name>.lua``): the library's functions. Those that
only read are registered ``no-writes``, which Redis runs even when it refuses writes (OOM)."""

READS_NEED = ("codec",)
"""What a read needs of the rules, as a script: the rest would cost its definitions."""


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (files("presence.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def with_codec(operation: str) -> str:
    """The script of a read: how identities are stored (``codec.lua``), then the operation."""
    return "\n".join([*(source(name) for name in READS_NEED), "bind_packing()", source(operation)])


def with_rules(operation: str) -> str:
    """The script of an operation on identities: the rules, then ``lua/<operation>.lua``."""
    return "\n".join([*(source(name) for name in RULES), "bind_packing()", source(operation)])


class Routine(ABC):
    """Lua that Redis runs by name: a script or a function of a library."""

    head: tuple[str, str]
    """The start of a call: the command and the name."""
    load: tuple[str, ...]
    """The command that loads it."""
    loaded_as: str
    """What ``load`` loads (one library for all its functions)."""

    def command(self, keys: Sequence[str], args: Sequence[resp.Arg]) -> tuple[resp.Arg, ...]:
        """The call with ``keys`` and ``args``."""
        return (*self.head, len(keys), *keys, *args)

    @abstractmethod
    def unknown(self, reply: object) -> bool:
        """Whether ``reply`` says that Redis does not have it (the call did not run)."""

    def there(self, reply: object) -> bool:
        """Whether ``reply`` to ``load`` leaves it loaded."""
        return not isinstance(reply, Exception)


class Script(Routine):
    """A script, called by its SHA1 (EVALSHA)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.head = ("EVALSHA", self.sha)
        self.load = ("SCRIPT", "LOAD", text)
        self.loaded_as = self.sha

    def unknown(self, reply: object) -> bool:
        return isinstance(reply, NoScriptError)


class Function(Routine):
    """A function of ``library``, called by its name (FCALL)."""

    def __init__(self, library: Library, operation: str) -> None:
        self.name = library.function(operation)
        self.head = ("FCALL", self.name)
        self.load = ("FUNCTION", "LOAD", library.code)
        self.loaded_as = library.name

    def unknown(self, reply: object) -> bool:
        return isinstance(reply, ResponseError) and str(reply).startswith("Function not found")

    def there(self, reply: object) -> bool:
        # Its name is a digest of its code: a library of that name is this very code, loaded
        # by another call (or another replica) first.
        return not isinstance(reply, Exception) or str(reply).endswith("already exists")


_ENTRY = """
-- What every function runs first: struct is bound at the first call (bind_packing), since
-- the top level of a library runs at FUNCTION LOAD, where no global but `redis` exists.
local function entry(operation)
  return function(keys, args)
    if not pack then
      bind_packing()
    end
    return operation(keys, args)
  end
end
"""


class Library:
    """The operations on identities as one library of Redis functions (see the module)."""

    def __init__(self) -> None:
        operations = [
            # KEYS and ARGV are the function's parameters: the operation's text reads them
            # as a script reads its globals.
            f"local function {name}_operation(KEYS, ARGV)\n{source(name)}\nend"
            for name in OPERATIONS
        ]
        body = "\n".join([*(source(name) for name in RULES), *operations, _ENTRY])
        self.digest = hashlib.sha1(body.encode()).hexdigest()[:16]
        self.name = f"presence_{self.digest}"
        registrations = [
            f"redis.register_function{{function_name = '{self.function(name)}', "
            f"callback = entry({name}_operation)"
            + (", flags = { 'no-writes' }" if kind == "reads" else "")
            + "}"
            for name, kind in OPERATIONS.items()
        ]
        self.code = "\n".join([f"#!lua name={self.name}", body, *registrations])

    def function(self, operation: str) -> str:
        """The name of ``operation``'s function."""
        return f"{self.name}_{operation}"


def has_functions(redis: Client) -> bool:
    """Whether ``redis`` runs Redis functions. Every Redis presence supports does (7.0 and
    later); the embedded store does if its fakeredis has them and emulates Redis 7 or later."""
    if isinstance(redis, RedisCluster) or not type(redis).__module__.startswith("fakeredis"):
        return True
    server = redis.connection_pool.connection_kwargs.get("server")
    version = tuple(getattr(server, "version", None) or (0,))
    return hasattr(scripting_mixin.ScriptingCommandsMixin, "fcall") and version >= (7,)


class Scripts:
    """The scripts and functions of the store, for one client (each loaded into Redis on
    first use, and again where Redis has forgotten it)."""

    def __init__(self, redis: Client) -> None:
        self.functions = has_functions(redis)
        """Whether the operations on identities are functions (else scripts)."""
        operations: dict[str, Routine]
        if self.functions:
            library = Library()
            operations = {name: Function(library, name) for name in OPERATIONS}
        else:
            operations = {
                name: Script(with_rules(name) if kind == "writes" else with_codec(name))
                for name, kind in OPERATIONS.items()
            }
        self.apply_event = operations["apply_event"]
        self.fire_due = operations["fire_due"]
        self.migrate = operations["migrate"]
        self.read = operations["read"]
        self.list = operations["list"]
        self.inspect = operations["inspect"]
        self.record = Script(source("record"))
        # Push subscriptions (store/push.py): one script per operation.
        self.push_create = Script(source("push_create"))
        self.push_update = Script(source("push_update"))
        self.push_rotate = Script(source("push_rotate"))
        self.push_delete = Script(source("push_delete"))
        self.push_acquire = Script(source("push_acquire"))
        self.push_renew = Script(source("push_renew"))
        self.push_release = Script(source("push_release"))
        self.push_commit = Script(source("push_commit"))


class ScriptCall(NamedTuple):
    """One call of a script or function: its KEYS (all in one hash slot) and ARGV (a named
    tuple: one is made for every webhook)."""

    script: Routine
    keys: Sequence[str]
    args: Sequence[resp.Arg]
    packed: bytes | None = None
    """The call as the protocol writes it, when it was made so already (the webhooks' calls:
    see ``Pages.event_call``)."""


async def load(client: Client, routine: Routine, node: ClusterNode | None) -> None:
    """Loads ``routine`` into ``node`` (the one Redis without a node)."""
    try:
        if node is None:
            await client.execute_command(*routine.load)
        else:
            await client.execute_command(*routine.load, target_nodes=node)
    except ResponseError as error:
        if not routine.there(error):
            raise


async def _pipelined(
    client: Client,
    node: ClusterNode | None,
    calls: Sequence[ScriptCall],
    wait: ReplicaWait | None = None,
) -> list[Any]:
    # With a wait, the barrier and WAIT go last on the same connection (replication.py).
    extra = wait.commands([call.keys for call in calls]) if wait is not None else []
    if node is None and isinstance(client, Redis) and resp.supported(client):
        commands = [resp.pack(call.script.command(call.keys, call.args)) for call in calls]
        sent = await resp.execute(client, commands + [resp.pack(c) for c in extra])
        return sent if wait is None else wait.settle(sent)
    # The raw EVALSHA or FCALL: a cluster pipeline refuses its evalsha() method, but routes
    # the raw command by its keys like any other; and redis-py's Script in a single-Redis
    # pipeline would ask SCRIPT EXISTS before every pipeline, a second round trip.
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            command = call.script.command(call.keys, call.args)
            if node is not None and not call.keys:
                # A call without keys could run on any node: on the one it was grouped
                # with, where what it calls is loaded if missing.
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
    unknown = [i for i, reply in enumerate(replies) if calls[i].script.unknown(reply)]
    if unknown:
        # A node that restarted (or a replica that took over) has forgotten the scripts or
        # the library: the calls it refused did not run, so they are simply made again.
        for routine in {calls[i].script.loaded_as: calls[i].script for i in unknown}.values():
            await load(client, routine, node)
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
