"""Opens the store the settings ask for: a real Redis, or the embedded one."""

from __future__ import annotations

from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from presence.keys import Keyspace
from presence.settings import Settings
from presence.store.redis import Clock, RedisStore

SOCKET_TIMEOUT_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 2.0


def redis_client(url: str) -> Redis:
    """A client for ``PRESENCE_REDIS_URL`` that gives up quickly when Redis is away, so a
    webhook is answered 503 (and retried by Twilio) well within Twilio's own timeout."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
        # One immediate retry on a fresh connection rides over a pooled connection that a
        # restarted Redis has closed. Timeouts are not retried: the first attempt may still
        # have run, and waiting twice would outlast Twilio's patience.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client


def embedded_client() -> Redis:
    """A fresh in-process Redis emulation (fakeredis, with Lua): state lives as long as the
    process does."""
    client: Redis = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    return client


def open_store(settings: Settings, *, clock: Clock | None = None) -> RedisStore:
    redis = embedded_client() if settings.redis_url is None else redis_client(settings.redis_url)
    return RedisStore(
        redis,
        Keyspace(settings.key_prefix),
        offline_grace_ms=settings.offline_grace_ms,
        endpoint_ttl_ms=settings.endpoint_ttl_ms,
        clock=clock,
    )
