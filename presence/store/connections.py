"""Connections to Redis as the settings ask for them (one Redis, a Redis Cluster, a master
found through Sentinels, or the embedded emulation), and the store opened on them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from presence.keys import Keyspace
from presence.settings import Settings
from presence.store.nodes import REFRESH_SECONDS
from presence.store.pages import Clock
from presence.store.redis import RedisStore
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client
from presence.store.sentinel import sentinel_client

SOCKET_TIMEOUT_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 2.0
MAX_CONNECTIONS = 64
"""Redis connections per process: writes share one pipeline at a time (coalesce.py), so
these are mostly for queries running at once."""


def without_password(url: str) -> str:
    """``url`` fit for a log line: its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.password, "***", 1)))


def _pool_options(max_connections: int, socket_timeout: float) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": socket_timeout,
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "health_check_interval": 30,
        # One immediate retry on a fresh connection rides over a pooled connection that a
        # restarted Redis (or a master gone in a failover) has closed. Timeouts are not
        # retried: the first attempt may still have run, and waiting twice would outlast
        # Twilio's patience.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def redis_client(
    url: str,
    *,
    max_connections: int = MAX_CONNECTIONS,
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
) -> Redis:
    """A client for ``PRESENCE_REDIS_URL`` that gives up quickly when Redis is away, so a
    webhook is answered 503 (and retried by Twilio) well within Twilio's own timeout.

    Its pool holds ``max_connections``; a request finding them all busy waits for one (up
    to the socket timeout) rather than failing at once, so a burst of queries queues instead
    of being answered 503."""
    pool = BlockingConnectionPool.from_url(url, **_pool_options(max_connections, socket_timeout))
    return Redis.from_pool(pool)


def settings_client(settings: Settings, *, on_failover: Callable[[], None] | None = None) -> Redis:
    """A client of the one Redis the settings name: ``PRESENCE_REDIS_URL``, or the master the
    Sentinels name (``PRESENCE_REDIS_SENTINELS``, followed through failovers)."""
    # A reply may take the WAIT for replicas on top of Redis' own time.
    socket_timeout = SOCKET_TIMEOUT_SECONDS + (
        settings.redis_wait_timeout_ms / 1000 if settings.redis_wait_replicas else 0
    )
    if settings.redis_sentinels:
        return sentinel_client(
            settings.redis_sentinels,
            settings.redis_sentinel_master,
            url=settings.redis_url,
            sentinel_password=settings.redis_sentinel_password,
            on_failover=on_failover,
            **_pool_options(MAX_CONNECTIONS, socket_timeout),
        )
    assert settings.redis_url is not None
    return redis_client(settings.redis_url, socket_timeout=socket_timeout)


def cluster_client(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> RedisCluster:
    """A Redis Cluster client for ``PRESENCE_REDIS_URL`` naming any node of the cluster (it
    finds the others), as quick to give up as ``redis_client``.

    No retry: a command that meets a node down (or a primary that failed) fails at once,
    its calls are answered 503, and the client asks the cluster for its layout again before
    the next one (a failover that has completed is found this way). redis-py's cluster
    pipeline, to retry, closes every connection of every node, those in use too
    (redis/redis-py#3546): the webhooks in flight on the nodes that are up would fail with
    the one that is down. MOVED and ASK are followed. What fails is the store's
    StoreUnavailable: a 503, which Twilio retries."""
    return RedisCluster.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        topology_refresh_min_interval=REFRESH_SECONDS,
        # Slots of a node that is down (and has no replica to take over) answer 503; the
        # others keep working if the cluster runs with cluster-require-full-coverage no.
        require_full_coverage=False,
    )


def embedded_client() -> Redis:
    """A fresh in-process Redis emulation (fakeredis, with Lua): state lives as long as the
    process does."""
    client: Redis = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    return client


def replica_wait(settings: Settings) -> ReplicaWait | None:
    """What ``PRESENCE_REDIS_WAIT_REPLICAS`` asks every write to wait for, if anything."""
    if not settings.redis_wait_replicas:
        return None
    return ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)


def open_store(
    settings: Settings,
    *,
    clock: Clock | None = None,
    on_failover: Callable[[], None] | None = None,
) -> RedisStore:
    """The store the settings ask for; ``on_failover`` is called each time Redis is seen to
    fail over (a new master named by the Sentinels, a Redis Cluster replica promoted)."""
    redis: Client
    if settings.embedded:
        redis = embedded_client()
    elif settings.redis_cluster:
        assert settings.redis_url is not None
        wait_s = settings.redis_wait_timeout_ms / 1000 if settings.redis_wait_replicas else 0
        redis = cluster_client(settings.redis_url, socket_timeout=SOCKET_TIMEOUT_SECONDS + wait_s)
    else:
        redis = settings_client(settings, on_failover=on_failover)
    return RedisStore(
        redis,
        Keyspace(settings.key_prefix),
        offline_grace_ms=settings.offline_grace_ms,
        endpoint_ttl_ms=settings.endpoint_ttl_ms,
        feed_retention_ms=settings.feed_retention_ms,
        clock=clock,
        wait=replica_wait(settings),
        on_failover=on_failover,
    )
