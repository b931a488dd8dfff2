"""Commands sent as RESP bytes packed here, on one pooled connection of a redis-py client:
the scripts of the webhooks that arrive together, the service's most frequent round trip.

redis-py's pipeline packs every argument through several layers and gives each reply a
timeout of its own; here a batch is packed in one go, written at once, and its replies read
under one timeout, each error reply kept as the result of its own command.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int | bytes
"""An argument of a command: text, a number, or bytes as they are (a packed EndpointId)."""


def pack(args: Sequence[Arg]) -> bytes:
    """One command in the Redis protocol: an array of bulk strings."""
    texts = [a if a.__class__ is str else str(a) for a in args if a.__class__ is not bytes]
    if len(texts) < len(args):
        # Bytes go as they are: not through the text that the rest is joined and encoded in.
        return f"*{len(args)}\r\n".encode() + b"".join(map(bulk, args))
    return f"*{len(texts)}\r\n{bulk_text(texts)}".encode()


def bulk(arg: Arg) -> bytes:
    """One argument as the protocol writes it."""
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def bulks(texts: Sequence[str]) -> bytes:
    """Arguments of a command as the protocol writes them, without the array's header: to
    put together with parts packed once (``Pages.event_call``)."""
    return bulk_text(texts).encode()


def bulk_text(texts: Sequence[str]) -> str:
    """``bulks`` as text, to be encoded once with the rest of its command."""
    # Joined as text (nearly always ASCII) and encoded once: a fifth faster than bytes.
    return "".join([f"${len(t) if t.isascii() else len(t.encode())}\r\n{t}\r\n" for t in texts])


def supported(client: Redis) -> bool:
    """True for a client of a real Redis (the embedded emulation has no socket to write to)."""
    return type(client).__module__.startswith("redis.")


async def _exchange(client: Redis, commands: Sequence[bytes]) -> list[Any]:
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        timeout = connection.socket_timeout
        try:
            async with asyncio.timeout(timeout):
                await connection.send_packed_command(b"".join(commands), check_health=True)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as error:
                        replies.append(error)
                return replies
        except TimeoutError:
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"Timeout reading from {connection.host}") from None
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
    finally:
        await pool.release(connection)


async def execute(client: Redis, commands: Sequence[bytes]) -> list[Any]:
    """Each command's reply (an error reply as its ``ResponseError``), in order. A connection
    that a restarted Redis has closed is replaced once, as redis-py's retry does: a script
    that did run answers duplicate or stale the second time, so nothing is applied twice."""
    try:
        return await _exchange(client, commands)
    except RedisConnectionError:
        return await _exchange(client, commands)
