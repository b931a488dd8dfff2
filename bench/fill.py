"""Fills a Redis through the service's own store code: ``RedisStore.apply_reachability``
with events parsed by ``presence.events.parse_event``, many calls in flight at once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from bench.support import SERVICE_SID, endpoint_id, reachability_params
from presence.backend import redis_client
from presence.events import ReachabilityEvent, parse_event
from presence.keys import Keyspace
from presence.store.redis import RedisStore
from presence.store.scripts import ScriptCall, run_scripts

GRACE_MS = 10_000
TTL_MS = 7_200_000


def make_store(
    url: str, *, grace_ms: int = GRACE_MS, clock: Callable[[], int] | None = None
) -> RedisStore:
    return RedisStore(
        redis_client(url),
        Keyspace("presence"),
        offline_grace_ms=grace_ms,
        endpoint_ttl_ms=TTL_MS,
        clock=clock,
    )


def identity_name(prefix: str, i: int) -> str:
    return f"{prefix}-{i:06d}"


def endpoints_for(prefix: str, count: int) -> list[str]:
    rng = random.Random(prefix)
    return [endpoint_id(rng) for _ in range(count)]


async def apply_many(
    store: RedisStore,
    prefix: str,
    first: int,
    stop: int,
    endpoints: list[str],
    *,
    connected: bool,
    event_id: int,
    service_sid: str = SERVICE_SID,
    concurrency: int = 128,
) -> float:
    """Applies one connect (IsIdentityOnline=true) or disconnect (false) to identities
    ``first``..``stop-1``; returns the rate (events/s). Fails on any outcome but applied."""
    position = first
    bad: list[str] = []

    async def worker() -> None:
        nonlocal position
        while position < stop:
            i = position
            position += 1
            params = reachability_params(
                identity_name(prefix, i), endpoints[i], event_id, connected
            )
            params["ServiceSid"] = service_sid
            event = parse_event(list(params.items()))
            assert isinstance(event, ReachabilityEvent)
            result = await store.apply_reachability(event)
            if result.outcome.value != "applied":
                bad.append(result.outcome.value)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if bad:
        raise RuntimeError(f"{len(bad)} events not applied: {bad[:5]}")
    return (stop - first) / (time.perf_counter() - started)


def pipelined_available(store: RedisStore) -> bool:
    return hasattr(store, "_identity_call") and hasattr(store, "_scripts")


async def apply_pipelined(
    store: RedisStore,
    prefix: str,
    first: int,
    stop: int,
    endpoints: list[str],
    *,
    connected: bool,
    event_id: int,
    service_sid: str = SERVICE_SID,
    batch: int = 1000,
    in_flight: int = 2,
) -> float:
    """The same script calls as ``apply_reachability``, but sent ``batch`` to a pipeline:
    ~10x faster to fill a million identities. KEYS and the shared ARGV come from the store's
    own ``_identity_call`` (so they follow the store if it changes); the event's four ARGV
    follow reachability.lua. Falls back to ``apply_many`` when the store lacks it."""
    if not pipelined_available(store):
        return await apply_many(
            store, prefix, first, stop, endpoints, connected=connected, event_id=event_id,
            service_sid=service_sid,
        )  # fmt: skip
    starts = iter(range(first, stop, batch))
    bad: list[str] = []

    async def worker() -> None:
        for start in starts:
            calls: list[ScriptCall] = []
            for i in range(start, min(start + batch, stop)):
                keys, args = store._identity_call(service_sid, identity_name(prefix, i))
                args += [
                    endpoints[i],
                    str(event_id),
                    "1" if connected else "0",
                    "1" if connected else "0",
                ]
                calls.append(ScriptCall(store._scripts.reachability, keys, args))
            replies = await run_scripts(store.redis, calls)
            bad.extend(reply[0] for reply in replies if reply[0] != "applied")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    if bad:
        raise RuntimeError(f"{len(bad)} events not applied: {bad[:5]}")
    return (stop - first) / (time.perf_counter() - started)
