"""``presence watch``: prints presence changes as they are published, one JSON line each."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TextIO

from redis import exceptions as redis_errors

from presence.backend import redis_client
from presence.keys import Keyspace

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


async def watch(
    redis_url: str,
    keyspace: Keyspace,
    out: TextIO,
    *,
    service: str | None = None,
    identity: str | None = None,
) -> None:
    """Prints each change until cancelled, resubscribing by itself after a Redis outage."""
    channel = (
        keyspace.identity_channel(service, identity)
        if service is not None and identity is not None
        else keyspace.changes_channel
    )
    backoff = 0.1
    while True:
        redis = redis_client(redis_url)
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                log.info("watching %s", channel)
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
