"""A connection to one Redis on which batches of commands are written as soon as they are
ready, without waiting for the replies of the batches before them.

Redis runs what one connection sends in the order it was sent, so batches written here one
after the other keep their order: two webhooks of one identity are applied in their order
of arrival, while Redis runs one batch and Python prepares the next (coalesce.py). The
replies are read back in the same order by one reader task, and each batch's future gets
its own. Every command is packed here (``resp.pack``); the connection comes from the client's
own pool, so its address, password, database, TLS and Sentinel master are the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

READ_SIZE = 1 << 16

Prepare = Callable[[AbstractConnection], Awaitable[None]]
"""Run on each new connection before anything is sent on it (loading the scripts)."""


def _parser(connection: AbstractConnection) -> hiredis.Reader:
    """A reader of replies as redis-py's own reader of this connection makes them: decoded
    as the client decodes, each error reply as the exception redis-py raises for it."""
    encoder = connection.encoder
    if encoder.decode_responses:
        return hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            encoding=encoder.encoding,
            errors=encoder.encoding_errors,
        )
    return hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)


class _Demoted(Exception):
    """A write was refused with READONLY: the connection is to a demoted master."""


@dataclass(eq=False)
class _Batch:
    commands: Sequence[bytes]
    replies: asyncio.Future[list[Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    retried: bool = False


class Pipe:
    """Batches of commands pipelined on one connection of ``client`` (see the module)."""

    def __init__(self, client: Redis, prepare: Prepare) -> None:
        self.client = client
        self.prepare = prepare
        self._connection: AbstractConnection | None = None
        self._in_flight: deque[_Batch] = deque()
        self._written = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.is_connected

    async def ready(self) -> None:
        """Connects (and prepares the connection) unless a connection is up."""
        if self._connection is not None and self._connection.is_connected:
            return
        async with self._connecting:
            if self._connection is not None and self._connection.is_connected:
                return
            await self._drop()
            pool = self.client.connection_pool
            connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
                await self.prepare(connection)
            except BaseException:
                await connection.disconnect(nowait=True)
                await pool.release(connection)
                raise
            self._connection = connection
            self._reader = asyncio.create_task(self._read(connection), name="presence-pipe")

    def submit(self, commands: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Writes ``commands`` now (after every batch submitted before), and returns the
        future of their replies (each error reply as its ``ResponseError``). Call after
        ``ready``: the write is synchronous, which is what keeps the order."""
        batch = _Batch(commands)
        self._write(batch)
        return batch.replies

    def _write(self, batch: _Batch) -> None:
        connection = self._connection
        if connection is None or not connection.is_connected:
            batch.replies.set_exception(RedisConnectionError("not connected to Redis"))
            return
        # The stream writer itself: redis-py's send_packed_command writes from a task of its
        # own when a timeout is set, so two batches could not be told apart in order there.
        connection._writer.writelines(batch.commands)  # type: ignore[union-attr]
        self._in_flight.append(batch)
        self._written.set()

    async def _read(self, connection: AbstractConnection) -> None:
        # The replies are read straight from the socket, as much as has come at once, and
        # parsed by one hiredis reader: redis-py's read_response per reply costs a coroutine
        # and a buffer check each. The connection is this pipe's alone from here on.
        stream: asyncio.StreamReader = connection._reader  # type: ignore[assignment]
        parser = _parser(connection)
        timeout = connection.socket_timeout
        replies: list[Any] = []
        try:
            while True:
                if not self._in_flight:
                    self._written.clear()
                    await self._written.wait()
                    continue
                async with asyncio.timeout(timeout):
                    data = await stream.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by Redis")
                parser.feed(data)
                replies = self._complete(parser, replies)
        except asyncio.CancelledError:
            raise
        except _Demoted:
            # This Redis was the master and is a replica now (a failover): its READONLY
            # replies say the scripts did not run. The connection goes, so the next one
            # goes to the new master (through the Sentinels), and the batches written
            # after that one are written again there.
            error = RedisConnectionError("the master is a replica now (READONLY)")
            await self._fail(connection, error, retry=True)
        except TimeoutError:
            await self._fail(connection, RedisTimeoutError("Timeout reading from Redis"))
        except (RedisConnectionError, OSError) as error:
            await self._fail(connection, error, retry=True)
        except Exception as error:
            await self._fail(connection, error)

    def _complete(self, parser: hiredis.Reader, replies: list[Any]) -> list[Any]:
        """Hands each batch in flight whose replies have all come its replies, in order;
        returns the replies read of the next batch so far. Raises ``_Demoted`` after a batch
        a demoted master refused."""
        while self._in_flight:
            batch = self._in_flight[0]
            while len(replies) < len(batch.commands):
                reply = parser.gets()
                if reply is False:
                    return replies
                replies.append(reply)
            self._in_flight.popleft()
            if not batch.replies.done():
                batch.replies.set_result(replies)
            demoted = any(reply.__class__ is ReadOnlyError for reply in replies)
            replies = []
            if demoted:
                raise _Demoted
        return replies

    async def _fail(
        self, connection: AbstractConnection, error: BaseException, *, retry: bool = False
    ) -> None:
        """Every batch in flight fails, in order; after a connection lost under them (a
        restarted Redis closes what the pool kept), each is written once more on a new one:
        a script that did run answers duplicate or stale the second time."""
        failed = list(self._in_flight)
        self._in_flight.clear()
        if self._connection is connection:
            await self._drop()
        again = [batch for batch in failed if retry and not batch.retried]
        if again:
            try:
                await self.ready()
            except Exception as reconnect_error:
                error = reconnect_error
            else:
                for batch in again:
                    batch.retried = True
                    self._write(batch)
                failed = [batch for batch in failed if batch not in again]
        for batch in failed:
            if not batch.replies.done():
                batch.replies.set_exception(error)

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)
            await self.client.connection_pool.release(connection)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        for batch in self._in_flight:
            if not batch.replies.done():
                batch.replies.set_exception(RedisConnectionError("closed"))
        self._in_flight.clear()
        await self._drop()
