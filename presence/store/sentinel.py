"""Redis through Sentinels (``PRESENCE_REDIS_SENTINELS``): a client whose connections go to
whichever Redis the Sentinels name as the master, so a failover is followed without a
restart.

Every new connection asks the Sentinels for the master's address (redis-py's Sentinel
support); a connection to a master that died fails, and its retry connects to the new one.
A connection to a master that was demoted to a replica is told READONLY on its first write:
redis-py drops such a connection, and so does the webhook pipe (pipe.py). The password,
database and TLS come from ``PRESENCE_REDIS_URL`` when it is set (its host is not used).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

log = logging.getLogger("presence.store")

FailoverSeen = Callable[[], None]
"""Called each time Redis is seen to have failed over (after logging it)."""


def connection_options(url: str | None) -> dict[str, Any]:
    """What a connection to the master keeps of ``PRESENCE_REDIS_URL``: credentials, database
    and TLS (``ssl=True`` and the ``ssl_*`` options of a ``rediss://`` URL), not its host."""
    if url is None:
        return {}
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


class MasterPool(SentinelConnectionPool, BlockingConnectionPool):
    """The connections to the master the Sentinels name; a request finding them all busy
    waits for one, as with one Redis (connections.py). Says when the master changes."""

    def __init__(self, *args: Any, on_failover: FailoverSeen | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.on_failover = on_failover
        self._last_master: tuple[str, int] | None = None

    async def get_master_address(self) -> Any:
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        seen = (str(address[0]), int(address[1]))
        if self._last_master is not None and seen != self._last_master:
            log.warning(
                "Redis failed over: the Sentinels name %s:%d as master (was %s:%d)",
                *seen,
                *self._last_master,
            )
            if self.on_failover is not None:
                self.on_failover()
        self._last_master = seen
        return address

    async def aclose(self) -> None:
        await super().aclose()
        # The Sentinels' own clients belong to this pool alone.
        await self.sentinel_manager.aclose()


def sentinel_client(
    sentinels: Sequence[tuple[str, int]],
    master: str,
    *,
    url: str | None,
    sentinel_password: str | None,
    on_failover: FailoverSeen | None = None,
    **options: Any,
) -> Redis:
    """A client of the master named ``master`` at ``sentinels``; ``options`` are the pool's
    (timeouts, retry, decoding, ``max_connections``)."""
    tls = connection_options(url)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    # The Sentinels themselves: their own password, the URL's TLS, the same quick timeouts.
    sentinel_options = {
        **timeouts,
        **{k: v for k, v in tls.items() if k.startswith("ssl")},
        "password": sentinel_password,
        "decode_responses": True,
    }
    manager = Sentinel(list(sentinels), sentinel_kwargs=sentinel_options)
    pool = MasterPool(
        master,
        manager,
        on_failover=on_failover,
        is_master=True,
        check_connection=False,
        **tls,
        **options,
    )
    return Redis.from_pool(pool)
