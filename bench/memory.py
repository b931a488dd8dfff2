"""Row 4: Redis memory per online identity with one endpoint, at 100k and 1M identities.

A fresh redis-server is filled through the store's own Lua script (one endpoint_connected
each, identities ``user-NNNNNN``, UUID-shaped endpoint ids, the default grace and TTL), and
``INFO memory`` ``used_memory`` is read before and after, each time on a fresh connection
with the filling connections closed (so client buffers do not count). The breakdown uses
``MEMORY USAGE ... SAMPLES 0`` on a sample of identity hashes and on every index key."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.fill import (
    apply_batches,
    endpoints_for,
    identity_name,
    make_store,
)
from bench.support import redis_server
from presence.keys import BUCKETS, PAGES, Keyspace
from presence.twilio.samples import SERVICE_SID

OTHER_SID = "IS" + "0" * 32


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def used_memory(port: int) -> int:
    with Redis(port=port) as client:
        value: int = client.info("memory")["used_memory"]
        return value


def breakdown(port: int, n: int) -> dict[str, Any]:
    """Where the bytes are: every page, graveyard and feed of the service, by MEMORY USAGE."""
    keys = Keyspace("presence")
    with Redis(port=port, decode_responses=True) as client:

        def total(names: list[str]) -> tuple[int, list[Any]]:
            p = client.pipeline(transaction=False)
            for name in names:
                p.memory_usage(name, samples=0)
                p.object("encoding", name)
            replies = p.execute()
            return sum(size or 0 for size in replies[0::2]), replies[1::2]

        pages = [keys.page(b, SERVICE_SID, g) for b in range(BUCKETS) for g in range(PAGES)]
        pages_total, encodings = total(pages)
        graveyards_total, _ = total(
            [keys.graveyard(b, SERVICE_SID, g) for b in range(BUCKETS) for g in range(PAGES)]
        )
        feeds = [keys.feed(b, SERVICE_SID) for b in range(BUCKETS)]
        feeds_total, _ = total(feeds)
        p = client.pipeline(transaction=False)
        for name in feeds:
            p.xlen(name)
        changes = sum(p.execute())
        due_total, _ = total([keys.due_pages(b) for b in range(BUCKETS)])
        counters_total, _ = total([keys.counters(b, SERVICE_SID) for b in range(BUCKETS)])
        info = {
            "dbsize": client.dbsize(),
            "page_encodings": {str(e): encodings.count(e) for e in set(encodings)},
            "example_page": pages[0],
            "example_page_fields": client.hlen(pages[0]),
        }
    return {
        "pages_total": pages_total,
        "page_bytes_per_identity": round(pages_total / n, 1),
        "graveyards_total": graveyards_total,
        "feed_total": feeds_total,
        "feed_changes": changes,
        "feed_bytes_per_change": round(feeds_total / max(1, changes), 1),
        "due_pages_total": due_total,
        "counters_total": counters_total,
        **info,
    }


async def fill(url: str, first: int, stop: int, endpoints: list[str]) -> tuple[float, str]:
    store = make_store(url)
    try:
        rate = await apply_batches(
            store, "user", first, stop, endpoints, connected=True, event_id=1
        )
        return rate, "RedisStore.apply_many, 1000 events a pipeline"
    finally:
        await store.close()


async def verify(url: str, n: int) -> dict[str, Any]:
    """Through the store's public reads: every identity online, one endpoint each."""
    store = make_store(url)
    try:
        stats = await store.stats(SERVICE_SID)
        sample = await store.lookup(
            SERVICE_SID, [identity_name("user", i) for i in range(0, n, max(1, n // 1000))]
        )
    finally:
        await store.close()
    if (
        stats.online != n
        or stats.endpoints != n
        or not all(p.online and len(p.endpoints) == 1 for p in sample)
    ):
        raise RuntimeError(f"the fill is not what was asked: {stats}")
    return {
        "online": stats.online,
        "endpoints": stats.endpoints,
        "pending_offline": stats.pending_offline,
    }


def run(workdir: Path, sizes: list[int]) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-memory")
    results: dict[str, Any] = {"sizes": {}}
    try:
        # The scripts are loaded (and a first identity of another service stored) before the
        # baseline, so the script cache does not count as presence.
        warm = make_store(redis.url)
        asyncio.run(_warm(warm))
        baseline = used_memory(redis.port)
        endpoints = endpoints_for("user", max(sizes))
        done = 0
        started = time.perf_counter()
        for n in sorted(sizes):
            log(f"memory: filling identities {done}..{n - 1} through the store's script")
            rate, results["method"] = asyncio.run(fill(redis.url, done, n, endpoints))
            done = n
            check = asyncio.run(verify(redis.url, n))
            used = used_memory(redis.port)
            results["sizes"][str(n)] = {
                "identities": n,
                "used_memory_delta": used - baseline,
                "bytes_per_identity": round((used - baseline) / n, 1),
                "fill_rate_per_s": round(rate, 0),
                "fill_seconds_so_far": round(time.perf_counter() - started, 1),
                "verified": check,
                "breakdown": breakdown(redis.port, n),
            }
            part = results["sizes"][str(n)]
            b = part["breakdown"]
            b["unaccounted_main_dict_etc"] = part["used_memory_delta"] - (
                b["pages_total"]
                + b["graveyards_total"]
                + b["feed_total"]
                + b["due_pages_total"]
                + b["counters_total"]
            )
            part["bytes_per_identity_without_feed"] = round(
                (part["used_memory_delta"] - b["feed_total"]) / n, 1
            )
            log(
                f"memory: {n} identities -> {part['bytes_per_identity']} bytes each "
                f"({rate:.0f} fills/s)"
            )
        with Redis(port=redis.port) as client:
            results["redis_evalsha"] = client.info("commandstats").get("cmdstat_evalsha")
    finally:
        redis.stop()
    return results


async def _warm(store: Any) -> None:
    try:
        await apply_batches(
            store,
            "warm",
            0,
            1,
            endpoints_for("warm", 1),
            connected=True,
            event_id=1,
            service_sid=OTHER_SID,
        )
    finally:
        await store.close()
