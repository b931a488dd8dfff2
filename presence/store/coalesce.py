"""Coalesced writes: script calls made together share one Redis round trip.

Webhooks that arrive together each need one Lua script. Sent one by one, every script is a
round trip, with the Python overhead of a command each; here the calls made together are
gathered and sent as one batch: on the next event-loop tick after the first call, at most
``max_batch`` at a time.

Calls run in Redis in the order they were made, so two webhooks of one identity are applied
in their order of arrival. On one Redis, batches are written one after the other on one
connection as soon as they are gathered, up to ``max_in_flight`` of them awaiting their
replies (pipe.py): Redis runs one while the service prepares the next, and one connection
keeps their order. On a Redis Cluster (or the embedded store) one batch is in flight at a
time, split by node, each node getting its part in order; a node that is down fails only the
calls it serves. Each caller is answered once its own script has run, with its own reply or
error.

With replicas to wait for (``PRESENCE_REDIS_WAIT_REPLICAS``), each batch ends with a barrier
and a WAIT (replication.py), and one batch is in flight at a time: a caller is answered once
the replicas hold its write, or fails with ``ReplicasBehind``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ReadOnlyError, ResponseError

from presence.store import resp
from presence.store.pipe import Pipe
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client, Routine, ScriptCall, run_scripts

MAX_BATCH = 512
"""Calls per batch at most: beyond this, a batch would hold its first caller too long."""
MAX_IN_FLIGHT = 8
"""Batches awaiting their replies at once, on one Redis."""
EAGER_BATCH = 16
"""On one Redis, a batch this big goes at once, without waiting for the tick to end: Redis
runs it while the service handles the requests that arrived with it (otherwise a burst of
requests is all handled first, then all wait for Redis together)."""


class _Call:
    """A queued script call, and the future its caller awaits."""

    __slots__ = ("reply", "script")

    def __init__(self, script: ScriptCall, reply: asyncio.Future[Any]) -> None:
        self.script = script
        self.reply = reply

    def command(self) -> bytes:
        call = self.script
        if call.packed is not None:
            return call.packed
        return resp.pack(call.script.command(call.keys, call.args))


class Coalescer:
    """Runs script calls on ``redis`` in batches of the calls made together."""

    def __init__(
        self,
        redis: Client,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
        wait: ReplicaWait | None = None,
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.wait = wait
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._holding = False
        self._pipe: Pipe | None = None
        if isinstance(redis, Redis) and resp.supported(redis):
            self._pipe = Pipe(redis, self._load_scripts)
        self._scripts: dict[str, Routine] = {}
        """Every script and library called, by what it loads: loaded on each new connection."""
        # Redis holds back whatever a connection sends after a WAIT until the WAIT returns: a
        # second batch in flight would wait for the first one's WAIT, then for its own.
        # One at a time, the next batch gathers every call made meanwhile instead (a group
        # commit), and a call waits for two WAITs at most.
        self.max_in_flight = 1 if wait is not None else max_in_flight
        self._in_flight = 0
        self._room = asyncio.Event()
        self._settling: set[asyncio.Task[None]] = set()
        self._recovering = asyncio.Lock()

    async def call(self, script: Routine, keys: Sequence[str], args: Sequence[resp.Arg]) -> Any:
        """Runs ``script`` (or function) with ``keys`` and ``args``; returns its reply or
        raises its error."""
        # A caller cancelled meanwhile leaves its call in the batch: once queued, the script
        # runs whatever happens to the caller, so the batch is never torn (its reply is
        # dropped, see _deliver).
        return await self._queue(ScriptCall(script, keys, args))

    def run(self, call: ScriptCall) -> asyncio.Future[Any]:
        """Runs ``call`` as ``call()`` does, sending its packed form when it has one: queued
        at once, and its reply awaited on the future returned (no coroutine of its own: one
        is run for nearly every webhook)."""
        return self._queue(call)

    @property
    def pipelined(self) -> bool:
        """Whether calls go on one pipelined connection (one real Redis, not a cluster)."""
        return self._pipe is not None

    async def call_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Runs ``calls`` (in one batch when they fit); returns each one's reply, or the
        error it met, in order (as ``run_scripts`` does)."""
        replies = [self._queue(call) for call in calls]
        results: list[Any] = []
        for reply in replies:
            try:
                results.append(await reply)
            except Exception as error:
                results.append(error)
        return results

    def _queue(self, script: ScriptCall) -> asyncio.Future[Any]:
        call = _Call(script, asyncio.get_running_loop().create_future())
        self._scripts.setdefault(script.script.loaded_as, script.script)
        self._pending.append(call)
        if len(self._pending) >= EAGER_BATCH and self._can_write_now():
            self._write(self._take())
        elif self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="presence-coalescer")
        return call.reply

    async def _send_all(self) -> None:
        try:
            # One tick's grace, so that the calls made in the same tick share the first batch.
            await asyncio.sleep(0)
            while self._pending:
                if self._pipe is None:
                    batch = self._take()
                    self._dispatched(batch)
                    await self._send(batch)
                    continue
                # Room first, then the batch: the calls made while the batches in flight
                # are awaited join it, rather than wait for it in turn.
                while self._in_flight >= self.max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                # Until the batch taken is written, no eager batch may go ahead of it (not
                # even when a recovery has just released the lock it waits for).
                self._holding = True
                try:
                    await self._submit(self._pipe, self._take())
                finally:
                    self._holding = False
        except BaseException:
            # Cancelled (the loop is closing): nothing will send what is left.
            for call in self._pending:
                call.reply.cancel()
            self._pending.clear()
            raise
        finally:
            self._sender = None

    def _take(self) -> list[_Call]:
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        return batch

    def _dispatched(self, batch: Sequence[_Call]) -> None:
        """A batch goes to Redis (a hook for the tests, which count round trips)."""

    # -- one Redis: pipelined ------------------------------------------------------------------

    async def _load_scripts(self, connection: AbstractConnection) -> None:
        for routine in list(self._scripts.values()):
            await connection.send_command(*routine.load)
            try:
                await connection.read_response()
            except ReadOnlyError:
                # A replica (reads may go to one, and a master may have been demoted) loads
                # no library: it has its master's, or refuses the call, which then says why.
                continue
            except ResponseError as error:
                if not routine.there(error):
                    raise

    def _can_write_now(self) -> bool:
        """True when a batch can be written without waiting: the connection is up, no
        recovery is under way, fewer than ``max_in_flight`` batches await replies, and the
        sender holds no batch it took (which goes first). While the sender waits out its
        tick's grace or for room, it holds none: the calls it would take are the ones a
        batch written now takes, first, in their order."""
        return (
            self._pipe is not None
            and self._pipe.connected
            and not self._recovering.locked()
            and self._in_flight < self.max_in_flight
            and not self._holding
        )

    def _commands(self, calls: Sequence[_Call]) -> list[bytes]:
        """The EVALSHA or FCALL of each call, then (with a wait) the barrier and WAIT after
        them."""
        commands = [call.command() for call in calls]
        if self.wait is not None:
            commands += [resp.pack(c) for c in self.wait.commands([c.script.keys for c in calls])]
        return commands

    def _replies(self, replies: list[Any]) -> list[Any]:
        """The calls' own replies (short of the replicas: ``ReplicasBehind`` errors)."""
        return replies if self.wait is None else self.wait.settle(replies)

    def _write(self, batch: list[_Call]) -> None:
        assert self._pipe is not None
        self._dispatched(batch)
        self._in_flight += 1
        replies = self._pipe.submit(self._commands(batch))
        task = asyncio.create_task(self._settle(self._pipe, batch, replies))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _submit(self, pipe: Pipe, batch: list[_Call]) -> None:
        # A recovery from NOSCRIPT resends what was refused before anything new is written.
        async with self._recovering:
            try:
                await pipe.ready()
            except Exception as error:
                _fail(batch, error)
                return
            self._write(batch)

    async def _settle(
        self, pipe: Pipe, batch: list[_Call], pending: asyncio.Future[list[Any]]
    ) -> None:
        try:
            try:
                replies = self._replies(await pending)
            except Exception as error:
                _fail(batch, error)
                return
            # Only an error can say a script is unknown: the rest (nearly all) are passed by
            # one isinstance, not a method call each.
            refused = [
                i
                for i, reply in enumerate(replies)
                if isinstance(reply, ResponseError) and batch[i].script.script.unknown(reply)
            ]
            if refused:
                # The scripts or the library were flushed: the calls refused did not run.
                # Loaded again and made again, in their order, before any later batch.
                async with self._recovering:
                    again = [batch[i] for i in refused]
                    try:
                        await self._load_scripts_on(pipe, again)
                        retried = self._replies(await pipe.submit(self._commands(again)))
                    except Exception as error:
                        _fail(again, error)
                        retried = []
                    for i, reply in zip(refused, retried, strict=False):
                        replies[i] = reply
            _deliver(batch, replies)
        finally:
            self._in_flight -= 1
            self._room.set()

    async def _load_scripts_on(self, pipe: Pipe, calls: Sequence[_Call]) -> None:
        routines = list(
            {call.script.script.loaded_as: call.script.script for call in calls}.values()
        )
        await pipe.ready()
        replies = await pipe.submit([resp.pack(routine.load) for routine in routines])
        for routine, reply in zip(routines, replies, strict=True):
            if not routine.there(reply):
                raise reply

    # -- a Redis Cluster, or the embedded store: one batch at a time --------------------------

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._run(batch)
        except Exception as error:
            _fail(batch, error)
            return
        except BaseException:
            for call in batch:
                call.reply.cancel()
            raise
        _deliver(batch, replies)

    async def _run(self, batch: Sequence[_Call]) -> list[Any]:
        # One pipeline (one per node of a Redis Cluster); scripts a restarted Redis has
        # forgotten are loaded and their calls, which did not run, made again.
        return await run_scripts(self.redis, [call.script for call in batch], self.wait)

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()


def _fail(calls: Sequence[_Call], error: BaseException) -> None:
    for call in calls:
        if not call.reply.done():
            call.reply.set_exception(error)


def _deliver(batch: Sequence[_Call], replies: Sequence[Any]) -> None:
    """Each call of ``batch`` still open gets its reply (a reply that is an error, raised)."""
    for call, reply in zip(batch, replies, strict=True):
        if call.reply.done():
            continue
        if isinstance(reply, Exception):
            call.reply.set_exception(reply)
        else:
            call.reply.set_result(reply)
