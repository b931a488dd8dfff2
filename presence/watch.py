"""``presence watch``: prints presence changes as they are published, one JSON line each: from
Redis pub/sub (``PRESENCE_REDIS_URL``), or from a running service's change feed over HTTP
(``--url``), which resumes from a cursor and works with the embedded store too."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from presence.keys import Keyspace
from presence.store.connections import cluster_client, redis_client, without_password

log = logging.getLogger("presence.watch")

MAX_BACKOFF_SECONDS = 5.0


def _wanted(message: str, service: str | None, identities: frozenset[str] | None) -> bool:
    if service is None and identities is None:
        return True
    try:
        change = json.loads(message)
    except ValueError:
        return False
    if not isinstance(change, dict):
        return False
    return (service is None or change.get("service_sid") == service) and (
        identities is None or change.get("identity") in identities
    )


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (its scheme, credentials and options) pointed at another node."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


class ClusterNodes:
    """The nodes of a Redis Cluster to subscribe on, one after the other.

    A message PUBLISHed on any node of a cluster is forwarded to every node, so a
    subscription on one node sees every change; when that node goes away, the next one is
    tried (the list of nodes is asked again of the cluster each time round)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.known: list[tuple[str, int]] = []
        self._next = 0

    async def _discover(self) -> None:
        candidates = [self.url] + [node_url(self.url, host, port) for host, port in self.known]
        for candidate in candidates:
            cluster = cluster_client(candidate)
            try:
                await cluster.initialize()
                found = sorted((node.host, int(node.port)) for node in cluster.get_primaries())
            except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
                continue
            finally:
                await cluster.aclose()
            if found:
                self.known = found
                return

    async def next_url(self) -> str:
        """The URL of the next node to subscribe on."""
        await self._discover()
        if not self.known:
            return self.url  # nothing answers: try the configured node (and back off)
        host, port = self.known[self._next % len(self.known)]
        self._next += 1
        return node_url(self.url, host, port)


async def watch(
    redis_url: str,
    keyspace: Keyspace,
    out: TextIO,
    *,
    service: str | None = None,
    identities: frozenset[str] | None = None,
    cluster: bool = False,
    connect: Callable[[], Redis] | None = None,
) -> None:
    """Prints each change until cancelled, resubscribing by itself after a Redis outage.

    With ``cluster``, ``redis_url`` names any node of a Redis Cluster: the subscription is
    made on one of its primaries, and moves to another when that one goes away. ``connect``
    makes the client of each subscription instead of ``redis_url`` (through Sentinels: each
    new subscription is made on the master they name now, so a failover is followed)."""
    channel = (
        keyspace.identity_channel(service, next(iter(identities)))
        if service is not None and identities is not None and len(identities) == 1
        else keyspace.changes_channel
    )
    nodes = ClusterNodes(redis_url) if cluster else None
    backoff = 0.1
    while True:
        url = redis_url if nodes is None else await nodes.next_url()
        redis = connect() if connect is not None else redis_client(url)
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                if nodes is None:
                    log.info("watching %s", channel)
                else:
                    log.info("watching %s on %s", channel, without_password(url))
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message["data"]
                    if _wanted(data, service, identities):
                        out.write(data + "\n")
                        out.flush()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
            log.warning("lost Redis (%s); resubscribing in %.1fs", error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            await redis.aclose()


class WatchRefused(Exception):
    """The service refused to stream (a bad token, ServiceSid or cursor): retrying is futile."""


@dataclass
class ServerSentEvent:
    """One Server-Sent Event as it is read."""

    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


async def server_sent_events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    """The events of a ``text/event-stream`` reply (comments skipped; an event with an ID and
    no data is yielded too: it moves the cursor)."""
    current = ServerSentEvent()
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if current.data or current.id is not None:
                yield current
            current = ServerSentEvent()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data.append(value)
        elif name == "event":
            current.event = value
        elif name == "id":
            current.id = value


async def watch_url(
    base_url: str,
    service: str,
    out: TextIO,
    *,
    identities: frozenset[str] | None = None,
    since: str | None = None,
    token: str | None = None,
) -> None:
    """Prints each change of ``service`` from a running service's change feed, with the cursor
    that resumes after it, until cancelled; reconnects by itself from the last cursor. A reset
    is printed as ``{"reset": true, "reason": ..., "cursor": ...}``. Raises ``WatchRefused``
    when the service refuses the request."""
    url = f"{base_url.rstrip('/')}/v1/services/{service}/changes"
    params = [("identity", name) for name in sorted(identities or ())]
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    cursor = since
    backoff = 0.1
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            sent = headers | ({"Last-Event-ID": cursor} if cursor else {})
            try:
                async with session.get(url, params=params, headers=sent) as response:
                    if response.status in (400, 401, 404):
                        raise WatchRefused(f"{response.status} {await response.text()}")
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
                    log.info("watching %s", url)
                    backoff = 0.1
                    async for event in server_sent_events(response):
                        cursor = event.id or cursor
                        _print(out, event, cursor)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.warning("lost %s (%s); again in %.1fs", url, error or type(error), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _print(out: TextIO, event: ServerSentEvent, cursor: str | None) -> None:
    if not event.data:
        return
    payload = json.loads("\n".join(event.data))
    if event.event == "reset":
        line = {"reset": True, "reason": payload.get("reason"), "cursor": cursor}
    else:
        line = {**payload, "cursor": cursor}
    out.write(json.dumps(line) + "\n")
    out.flush()
