"""``presence watch``: prints presence changes as they are published, one JSON line each."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_errors

from presence.keys import Keyspace
from presence.store.connections import cluster_client, redis_client, without_password

log = logging.getLogger("presence.watch")

MAX_BACKOFF_SECONDS = 5.0


def _wanted(message: str, service: str | None, identity: str | None) -> bool:
    if service is None and identity is None:
        return True
    try:
        change = json.loads(message)
    except ValueError:
        return False
    if not isinstance(change, dict):
        return False
    return (service is None or change.get("service_sid") == service) and (
        identity is None or change.get("identity") == identity
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
    identity: str | None = None,
    cluster: bool = False,
) -> None:
    """Prints each change until cancelled, resubscribing by itself after a Redis outage.

    With ``cluster``, ``redis_url`` names any node of a Redis Cluster: the subscription is
    made on one of its primaries, and moves to another when that one goes away."""
    channel = (
        keyspace.identity_channel(service, identity)
        if service is not None and identity is not None
        else keyspace.changes_channel
    )
    nodes = ClusterNodes(redis_url) if cluster else None
    backoff = 0.1
    while True:
        url = redis_url if nodes is None else await nodes.next_url()
        redis = redis_client(url)
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
                    if _wanted(data, service, identity):
                        out.write(data + "\n")
                        out.flush()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as error:
            log.warning("lost Redis (%s); resubscribing in %.1fs", error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            await redis.aclose()
