"""Settings, from ``PRESENCE_*`` environment variables or the flags of the same names."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import parse_url

from presence.keys import Keyspace
from presence.twilio import is_sid, sid_problem

ENV_PREFIX = "PRESENCE_"

SENTINEL_PORT = 26379
"""The port of a Sentinel named without one."""

MAX_WAIT_REPLICAS = 16
MAX_WAIT_TIMEOUT_MS = 5000
"""A webhook waits for at most two WAITs (the batch ahead of it, then its own) plus Redis'
own time: at 5 s each that is still within Twilio's 15 s."""


class SettingsError(Exception):
    """An invalid setting; the message names it as its environment variable."""


class Settings(BaseSettings):
    """Every setting of the service. See docs/configuration.md for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_sentinels: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    redis_sentinel_master: str = Field(default="mymaster", min_length=1)
    redis_sentinel_password: str | None = None
    redis_wait_replicas: int = Field(default=0, ge=0, le=MAX_WAIT_REPLICAS)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=MAX_WAIT_TIMEOUT_MS)
    key_prefix: str = "presence"
    twilio_auth_token: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_url: str | None = None
    allow_unsigned_webhooks: bool = False
    account_sid: str | None = None
    offline_grace_seconds: float = Field(default=10.0, ge=0, le=86400, allow_inf_nan=False)
    endpoint_ttl_seconds: float = Field(
        default=7200.0, ge=0, le=10 * 365 * 86400, allow_inf_nan=False
    )
    api_token: str | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    workers: int = Field(default=1, ge=1, le=256)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    feed_retention_seconds: float = Field(
        default=86400.0, ge=60, le=30 * 86400, allow_inf_nan=False
    )
    max_streams: int = Field(default=1000, ge=1, le=1_000_000)
    admin_token: str | None = None
    push_concurrency: int = Field(default=16, ge=1, le=256)
    push_timeout_seconds: float = Field(default=10.0, ge=1, le=30, allow_inf_nan=False)
    push_allow_private: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("a unix:// URL needs the socket's path: unix:///run/redis.sock")
        try:
            ConnectionPool.from_url(value)
        except ValueError as error:
            raise ValueError(f"is not a usable Redis URL ({error})") from None
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _redis_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        if not value or "redis_url" not in info.data:
            return value  # (a bad PRESENCE_REDIS_URL has been reported already)
        url = info.data["redis_url"]
        if url is None:
            raise ValueError(
                f"needs {env_name('redis_url')}: the redis:// or rediss:// URL of any node of "
                f"the cluster"
            )
        if urlsplit(url).scheme == "unix":
            raise ValueError(
                f"a Redis Cluster is reached over TCP: {env_name('redis_url')} must be a "
                f"redis:// or rediss:// URL of one of its nodes"
            )
        if parse_url(url).get("db"):
            raise ValueError(
                f"a Redis Cluster has database 0 only: drop the database number from "
                f"{env_name('redis_url')}"
            )
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _redis_sentinels(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = tuple(_sentinel_address(part) for part in value.split(",") if part.strip())
        if value and info.data.get("redis_cluster"):
            raise ValueError(
                f"Sentinels and {env_name('redis_cluster')} exclude each other: a Redis Cluster "
                f"fails over by itself"
            )
        url = info.data.get("redis_url")
        if value and url is not None and urlsplit(url).scheme == "unix":
            raise ValueError(
                f"the master the Sentinels name is reached over TCP: {env_name('redis_url')} "
                f"must be a redis:// or rediss:// URL (its host is not used), or unset"
            )
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        Keyspace(value)
        return value

    @field_validator("twilio_auth_token", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(token.strip() for token in value.split(",") if token.strip())
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @field_validator("account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is not None and not is_sid(value, "AC"):
            raise ValueError(sid_problem("AC"))
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def embedded(self) -> bool:
        """True when neither a Redis URL nor Sentinels are set: the service runs on its
        in-process store."""
        return self.redis_url is None and not self.redis_sentinels

    @property
    def unsigned_webhooks(self) -> bool:
        """True when webhook signatures are not checked."""
        return self.allow_unsigned_webhooks or not self.twilio_auth_token

    @property
    def offline_grace_ms(self) -> int:
        return round(self.offline_grace_seconds * 1000)

    @property
    def endpoint_ttl_ms(self) -> int:
        return round(self.endpoint_ttl_seconds * 1000)

    @property
    def feed_retention_ms(self) -> int:
        return round(self.feed_retention_seconds * 1000)


def _sentinel_address(text: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 26379) or ``[v6 address]:port``."""
    text = text.strip()
    host, port = text, str(SENTINEL_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, ``overrides`` (command-line flags) taking precedence.

    Raises ``SettingsError`` with a one-line message naming the first bad setting.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        name = env_name(str(first["loc"][0])) if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {message}") from None


def check_serve(settings: Settings) -> None:
    """Refuses what ``presence serve`` must not run with."""
    if settings.embedded and settings.workers > 1:
        raise SettingsError(
            f"{env_name('workers')} above 1 needs {env_name('redis_url')}: the embedded store "
            f"lives inside one process, so workers would not share presence"
        )
    if settings.embedded and settings.redis_wait_replicas:
        raise SettingsError(
            f"{env_name('redis_wait_replicas')} needs a Redis with replicas: the embedded store "
            f"has none (set {env_name('redis_url')} or {env_name('redis_sentinels')})"
        )
    if not (settings.embedded or settings.twilio_auth_token or settings.allow_unsigned_webhooks):
        raise SettingsError(
            f"refusing to accept unsigned webhooks on a real Redis: set "
            f"{env_name('twilio_auth_token')} or {env_name('allow_unsigned_webhooks')}=true"
        )
