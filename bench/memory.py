"""Row 3: Redis memory per identity, online with one endpoint and offline, at 100k and 1M
identities (100k only with ``--quick``).

For each size a fresh redis-server is filled through the store's own Lua script (one
endpoint_connected each, identities of 10 to 40 characters, UUID endpoint ids, the default
grace and TTL), and ``INFO memory`` ``used_memory`` is read before and after, each time on a
fresh connection with the filling connections closed (so client buffers do not count). The
change feed is what the service keeps for ``PRESENCE_FEED_RETENTION_SECONDS`` whatever the
number of identities, so it is measured apart: the feed streams are deleted and
``used_memory`` read again; the difference, divided by the entries the streams held, is the
feed's cost per change.

Then three more states of the same identities:

- **after one flap**: every identity disconnects (IsIdentityOnline=false) and reconnects the
  same endpoint milliseconds later, the hourly rebalancing of Sync, suppressed by the grace
  period (no change published, checked). What an online identity looks like once it has
  lived an hour.
- **offline**: every identity disconnects through a store whose grace is 0 (offline at once),
  then a store whose clock is past the endpoint TTL sweeps (``RedisStore.sweep`` while
  ``more``) until nothing is due, so each identity is compacted into its page's graveyard;
  ``RedisStore.inspect`` on a sample checks that they are (``where == "graveyard"``); the
  feeds are deleted again before reading ``used_memory``.

The breakdown is ``MEMORY USAGE ... SAMPLES 0`` of every page, graveyard, counter hash and due
set of the service, with the pages' encodings (listpack or hashtable)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.fill import TTL_MS, Step, apply_batches, identity_name, make_store
from bench.support import loadavg, log, redis_server
from presence.keys import BUCKETS, PAGES, Keyspace
from presence.sweeper import SWEEP_BATCH
from presence.twilio.samples import SERVICE_SID

OTHER_SID = "IS" + "0" * 32
PREFIX = "u"
SAMPLE = 1000
"""Identities checked through the store's reads after each phase."""

KEYS = Keyspace("presence")


def used_memory(port: int) -> int:
    with Redis(port=port) as client:
        value: int = client.info("memory")["used_memory"]
        return value


def feed_keys(service_sid: str = SERVICE_SID) -> list[str]:
    return [KEYS.feed(b, service_sid) for b in range(BUCKETS)]


def drop_feeds(port: int) -> tuple[int, int]:
    """Deletes the service's change feed; returns (its entries, the bytes that freed)."""
    with Redis(port=port) as client:
        p = client.pipeline(transaction=False)
        for name in feed_keys():
            p.xlen(name)
        changes = sum(p.execute())
    before = used_memory(port)
    with Redis(port=port) as client:
        client.delete(*feed_keys())
    return changes, before - used_memory(port)


def breakdown(port: int) -> dict[str, Any]:
    """Where the bytes are: every page, graveyard, counter hash and due set of the service,
    by MEMORY USAGE, and how the pages are encoded."""
    pages = [KEYS.page(b, SERVICE_SID, g) for b in range(BUCKETS) for g in range(PAGES)]
    graveyards = [KEYS.graveyard(b, SERVICE_SID, g) for b in range(BUCKETS) for g in range(PAGES)]
    with Redis(port=port, decode_responses=True) as client:

        def usage(names: list[str]) -> list[int]:
            p = client.pipeline(transaction=False)
            for name in names:
                p.memory_usage(name, samples=0)
            return [size or 0 for size in p.execute()]

        p = client.pipeline(transaction=False)
        for name in pages:
            p.object("encoding", name)
            p.hlen(name)
        replies = p.execute()
        encodings, fields = replies[0::2], [n for n in replies[1::2] if n]
        page_bytes, graveyard_bytes = usage(pages), usage(graveyards)
        p = client.pipeline(transaction=False)
        for name in graveyards:
            p.strlen(name)
        records = sum(p.execute()) // 23
        example = next((name for name, n in zip(pages, replies[1::2], strict=True) if n), None)
        value_bytes: list[int] = []
        if example:
            p = client.pipeline(transaction=False)
            names = client.hkeys(example)
            for name in names:
                p.hstrlen(example, name)
            value_bytes = p.execute()
        return {
            "dbsize": client.dbsize(),
            "pages": len(fields),
            "pages_total": sum(page_bytes),
            "page_encodings": {str(e): encodings.count(e) for e in set(encodings) if e},
            "fields_per_page": {
                "min": min(fields, default=0),
                "mean": round(statistics.fmean(fields), 1) if fields else 0,
                "max": max(fields, default=0),
                "over_128": sum(1 for n in fields if n > 128),
            },
            "value_bytes": {
                "min": min(value_bytes, default=0),
                "max": max(value_bytes, default=0),
                "over_64": sum(1 for n in value_bytes if n > 64),
                "sampled_page": example,
            },
            "graveyards": sum(1 for size in graveyard_bytes if size),
            "graveyard_records": records,
            "graveyards_total": sum(graveyard_bytes),
            "counters_total": sum(usage([KEYS.counters(b, SERVICE_SID) for b in range(BUCKETS)])),
            "due_pages_total": sum(usage([KEYS.due_pages(b) for b in range(BUCKETS)])),
        }


async def _stats(url: str, n: int, online: bool, endpoints: int) -> dict[str, Any]:
    """Through the store's public reads: the counters, and a sample of identities."""
    store = make_store(url)
    try:
        stats = await store.stats(SERVICE_SID)
        sample = await store.lookup(
            SERVICE_SID, [identity_name(PREFIX, i) for i in range(0, n, max(1, n // SAMPLE))]
        )
    finally:
        await store.close()
    expected = (n if online else 0, 0, n * endpoints)
    if (stats.online, stats.pending_offline, stats.endpoints) != expected or not all(
        p.online == online and len(p.endpoints) == endpoints for p in sample
    ):
        raise RuntimeError(f"the fill is not what was asked: {stats}")
    return {"online": stats.online, "pending": stats.pending_offline, "endpoints": stats.endpoints}


async def _fill(url: str, n: int, *steps: Step, grace_ms: int | None = None) -> float:
    store = make_store(url) if grace_ms is None else make_store(url, grace_ms=grace_ms)
    try:
        return await apply_batches(store, PREFIX, 0, n, *steps)
    finally:
        await store.close()


async def _compact(url: str, port: int) -> dict[str, Any]:
    """Sweeps with a clock past the endpoint TTL until nothing is due."""
    with Redis(port=port) as client:
        seconds, micros = client.time()
    later = seconds * 1000 + micros // 1000 + TTL_MS + 60_000
    store = make_store(url, clock=lambda: later)
    passes = changes = 0
    started = time.perf_counter()
    try:
        while True:
            # The service's own pass: 2 pages per bucket. Bigger passes at a million identities
            # (122 per page, every one due) outlast the client's 3 s socket timeout.
            result = await store.sweep(SWEEP_BATCH)
            passes += 1
            # The warm-up identity of the other service expires too: not counted.
            changes += sum(1 for c in result.changes if c.service_sid == SERVICE_SID)
            if not result.more:
                break
    finally:
        await store.close()
    with Redis(port=port) as client:
        p = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            p.zcard(KEYS.due_pages(b))
        still_due = sum(p.execute())
    if still_due or changes:
        raise RuntimeError(f"compaction: {still_due} pages still due, {changes} changes")
    return {"sweep_passes": passes, "sweep_seconds": round(time.perf_counter() - started, 2)}


async def _where(url: str, n: int) -> dict[str, int]:
    """Where a sample of identities is kept, by ``RedisStore.inspect``."""
    store = make_store(url)
    found: dict[str, int] = {}
    try:
        for i in range(0, n, max(1, n // 200)):
            stored = await store.inspect(SERVICE_SID, identity_name(PREFIX, i))
            found[stored.where] = found.get(stored.where, 0) + 1
    finally:
        await store.close()
    return found


def _phase(used: int, baseline: int, n: int, port: int, **extra: Any) -> dict[str, Any]:
    part: dict[str, Any] = {
        "used_memory_delta": used - baseline,
        "bytes_per_identity": round((used - baseline) / n, 1),
        **extra,
        "breakdown": breakdown(port),
    }
    b = part["breakdown"]
    b["rest_keyspace_etc"] = part["used_memory_delta"] - (
        b["pages_total"] + b["graveyards_total"] + b["counters_total"] + b["due_pages_total"]
    )
    return part


def measure(workdir: Path, n: int) -> dict[str, Any]:
    """The three states of ``n`` identities on a fresh redis-server."""
    redis = redis_server(workdir / f"redis-memory-{n}")
    result: dict[str, Any] = {"identities": n, "loadavg_at_start": loadavg()}
    try:
        # The scripts are loaded (and a first identity of another service stored) before the
        # baseline, so the script cache does not count as presence.
        asyncio.run(warm_scripts(redis.url))
        baseline = used_memory(redis.port)

        log(f"memory: {n:,} identities connect (one endpoint each)")
        rate = asyncio.run(_fill(redis.url, n, Step(connected=True, event_id=1)))
        verified = asyncio.run(_stats(redis.url, n, online=True, endpoints=1))
        changes, feed_bytes = drop_feeds(redis.port)
        online = _phase(
            used_memory(redis.port),
            baseline,
            n,
            redis.port,
            fill_rate_per_s=round(rate),
            verified=verified,
            feed_changes=changes,
            feed_bytes=feed_bytes,
            feed_bytes_per_change=round(feed_bytes / max(1, changes), 1),
        )
        result["online"] = online
        log(
            f"memory: {online['bytes_per_identity']} B per online identity; feed "
            f"{online['feed_bytes_per_change']} B per change ({rate:,.0f} events/s)"
        )

        log(f"memory: {n:,} flaps (disconnect, IsIdentityOnline=false; reconnect)")
        rate = asyncio.run(
            _fill(
                redis.url,
                n,
                Step(connected=False, event_id=2),
                Step(connected=True, event_id=3),
            )
        )
        verified = asyncio.run(_stats(redis.url, n, online=True, endpoints=1))
        changes, feed_bytes = drop_feeds(redis.port)
        if changes:
            raise RuntimeError(f"{changes} changes published by flaps the grace should hide")
        result["after_flap"] = _phase(
            used_memory(redis.port), baseline, n, redis.port, verified=verified
        )
        log(f"memory: {result['after_flap']['bytes_per_identity']} B per identity after a flap")

        log(f"memory: {n:,} go offline (grace 0), then sweep past the endpoint TTL")
        rate = asyncio.run(_fill(redis.url, n, Step(connected=False, event_id=4), grace_ms=0))
        verified = asyncio.run(_stats(redis.url, n, online=False, endpoints=0))
        compaction = asyncio.run(_compact(redis.url, redis.port))
        where = asyncio.run(_where(redis.url, n))
        changes, feed_bytes = drop_feeds(redis.port)
        result["offline"] = _phase(
            used_memory(redis.port),
            baseline,
            n,
            redis.port,
            verified=verified,
            where_sampled=where,
            feed_changes=changes,
            feed_bytes_per_change=round(feed_bytes / max(1, changes), 1),
            **compaction,
        )
        if set(where) != {"graveyard"}:
            raise RuntimeError(f"not every sampled identity was compacted: {where}")
        log(f"memory: {result['offline']['bytes_per_identity']} B per offline identity")
        result["loadavg_at_end"] = loadavg()
    finally:
        redis.stop()
    return result


def run(workdir: Path, sizes: list[int]) -> dict[str, Any]:
    return {
        "method": "RedisStore.apply_many, 1000 events a pipeline, 4 pipelines in flight",
        "sizes": {str(n): measure(workdir, n) for n in sorted(sizes)},
    }


async def warm_scripts(url: str) -> None:
    """Loads the store's scripts (storing an identity of another service): before a
    baseline, so the script cache does not count as presence."""
    store = make_store(url)
    try:
        await apply_batches(store, "w", 0, 1, Step(True, 1), service_sid=OTHER_SID)
    finally:
        await store.close()
