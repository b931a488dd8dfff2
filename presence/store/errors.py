"""Redis' ways of saying "not now", translated into the store's one: ``StoreUnavailable``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

from redis import exceptions as redis_errors

from presence.model import StoreUnavailable

UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    # A Redis Cluster with the slot's node away, or reconfiguring: no node covers the slot,
    # redirections kept coming (TTL exhausted), or no node could be reached at all.
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
    redis_errors.AskError,
    OSError,
)

_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
"""The start of redis-py's RedisClusterException when no node answers."""

# Replies of a Redis that is up but cannot take the command now (a long script, loading,
# failing to persist, no replicas, a cluster reconfiguring); in a pipeline they follow
# redis-py's "caused error: ".
_UNAVAILABLE_REPLY = re.compile(
    r"(?:^|caused error: )(BUSY|LOADING|MISCONF|NOREPLICAS|MASTERDOWN|TRYAGAIN|CLUSTERDOWN"
    r"|READONLY|OOM)\b"
)


@asynccontextmanager
async def unavailable_as_store_error() -> AsyncIterator[None]:
    """Raises ``StoreUnavailable`` for whatever Redis error means "retry later"; lets any
    other error through."""
    try:
        yield
    except Exception as error:
        raise_as_store_error(error)


def raise_as_store_error(error: Exception) -> NoReturn:
    """Raises ``error`` as ``as_store_error`` translates it (chained to it), or as it is.
    (The hot path catches and calls this itself: a context manager per webhook costs more
    than the try.)"""
    translated = as_store_error(error)
    if translated is error:
        raise error
    raise translated from error


def as_store_error(error: Exception) -> Exception:
    """``StoreUnavailable`` for a Redis error that means "retry later"; any other error as
    it is."""
    if isinstance(error, UNAVAILABLE):
        return StoreUnavailable(str(error) or type(error).__name__)
    if isinstance(error, redis_errors.RedisClusterException):
        if str(error).startswith(_CLUSTER_UNREACHABLE):
            return StoreUnavailable(str(error))
        return error
    if isinstance(error, redis_errors.ResponseError):
        if _UNAVAILABLE_REPLY.search(str(error)):
            return StoreUnavailable(str(error))
        return error
    if isinstance(error, AttributeError | TypeError | RuntimeError) and closed_under_its_feet(
        error
    ):
        return StoreUnavailable(f"connection closed while in use ({error})")
    return error


def closed_under_its_feet(error: BaseException) -> bool:
    """True for the AttributeError or TypeError redis-py 8.1's asyncio connection lets out
    when its connection is closed while a command is being written (uvloop's transport
    raises RuntimeError "the handler is closed" instead): by the peer (a Redis that died as
    the connection was made), or by the cluster client, which closes every connection of
    every node (those in use too) when it starts over after an error (redis/redis-py#3546,
    #4287)."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename.replace("\\", "/"))
        tb = tb.tb_next
    if not frames:
        return False
    if isinstance(error, RuntimeError):
        # uvloop's own frames have no Python file: look for redis-py's writing under them.
        return "the handler is closed" in str(error) and any(
            path.endswith("/redis/asyncio/connection.py") for path in frames
        )
    path = frames[-1]
    return path.endswith(("/redis/asyncio/connection.py", "/asyncio/streams.py")) or (
        "/asyncio/" in path and "selector_events" in path
    )
