"""Fills a Redis through the service's own store code: events parsed by
``presence.events.parse_event``, applied by ``RedisStore.apply_many`` a thousand to a pipeline,
several pipelines in flight (about ten times faster than one ``apply_reachability`` each, for a
million identities).

Identities and endpoints are derived from their numbers alone (``identity_name``,
``endpoint_of``), so the rows can fill millions without keeping a list, and name the same
identities again when they disconnect them or send them webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from presence.events import ReachabilityEvent, parse_event
from presence.keys import Keyspace
from presence.store.connections import redis_client
from presence.store.redis import RedisStore
from presence.twilio.samples import SERVICE_SID, reachability

GRACE_MS = 10_000
TTL_MS = 7_200_000
"""The service's defaults (PRESENCE_OFFLINE_GRACE_SECONDS, PRESENCE_ENDPOINT_TTL_SECONDS)."""

NAME_LENGTHS = range(10, 41)
"""Identity lengths of the fills: real identities are user ids and e-mail addresses, and a
page's encoding depends on its bytes, so the fills spread over 10 to 40 characters (25 on
average) rather than all being short."""

_FILLER = ".abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"


def make_store(
    url: str, *, grace_ms: int = GRACE_MS, clock: Callable[[], int] | None = None
) -> RedisStore:
    """A store as ``presence serve`` makes one (default TTL, ``grace_ms``), on its own
    connections; ``clock`` freezes or shifts its time (else the Redis server's clock)."""
    return RedisStore(
        redis_client(url),
        Keyspace("presence"),
        offline_grace_ms=grace_ms,
        endpoint_ttl_ms=TTL_MS,
        clock=clock,
    )


def identity_name(prefix: str, i: int) -> str:
    """Identity ``i`` of a fill: ``<prefix>-<i>``, padded to a length of 10 to 40 characters
    that only depends on ``i`` (spread evenly). Unique: the padding starts with a dot, which no
    number has. Keep ``prefix`` to a letter or two so the shortest names fit."""
    core = f"{prefix}-{i}"
    length = NAME_LENGTHS[zlib.crc32(core.encode()) % len(NAME_LENGTHS)]
    return core if length <= len(core) else core + _FILLER[: length - len(core)]


def endpoint_of(prefix: str, i: int, k: int = 0) -> str:
    """Endpoint ``k`` of identity ``i``: a lowercase UUID (what Sync's EndpointIds look like,
    and what the store packs in 16 bytes), derived from the three alone."""
    h = hashlib.blake2b(f"{prefix}:{i}:{k}".encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event(
    prefix: str,
    i: int,
    endpoint: str,
    event_id: int,
    *,
    connected: bool,
    service_sid: str = SERVICE_SID,
    online: bool | None = None,
) -> ReachabilityEvent:
    """Identity ``i``'s connect or disconnect of ``endpoint``, parsed as the service parses a
    webhook; IsIdentityOnline is ``online``, by default ``connected`` (a disconnect of the
    identity's last endpoint)."""
    params = reachability(
        identity_name(prefix, i),
        endpoint,
        event_id,
        connected if online is None else online,
        connected=connected,
        service_sid=service_sid,
    )
    parsed = parse_event(list(params.items()))
    assert isinstance(parsed, ReachabilityEvent)
    return parsed


@dataclass(frozen=True)
class Step:
    """One event for each identity of a fill: a connect (or disconnect) of its endpoint number
    ``endpoint`` with this EventId; IsIdentityOnline ``online``, by default ``connected``."""

    connected: bool
    event_id: int
    endpoint: int = 0
    online: bool | None = None


async def apply_batches(
    store: RedisStore,
    prefix: str,
    first: int,
    stop: int,
    *steps: Step,
    service_sid: str = SERVICE_SID,
    batch: int = 1000,
    in_flight: int = 4,
) -> float:
    """Applies ``steps``, in order, to each of the identities ``first``..``stop-1``: ``batch``
    identities to a pipeline (their steps back to back, so a disconnect and a reconnect are
    milliseconds apart, like a rebalancing flap), ``in_flight`` pipelines at once (Redis works
    on one while this process builds the next). Returns the rate (events/s). Fails on any
    outcome but applied."""
    starts = iter(range(first, stop, batch))
    bad: list[str] = []

    async def worker() -> None:
        # One shared iterator: each worker takes the next batch as it is free.
        for start in starts:
            events = [
                event(
                    prefix,
                    i,
                    endpoint_of(prefix, i, step.endpoint),
                    step.event_id,
                    connected=step.connected,
                    service_sid=service_sid,
                    online=step.online,
                )
                for i in range(start, min(start + batch, stop))
                for step in steps
            ]
            results = await store.apply_many(events)
            bad.extend(r.outcome.value for r in results if r.outcome.value != "applied")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    if bad:
        raise RuntimeError(f"{len(bad)} events not applied: {bad[:5]}")
    return (stop - first) * len(steps) / (time.perf_counter() - started)
