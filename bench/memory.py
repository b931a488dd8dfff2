"""Row 4: Redis memory per online identity with one endpoint, at 100k and 1M identities.

A fresh redis-server is filled through the store's own Lua script (one endpoint_connected
each, identities ``user-NNNNNN``, UUID-shaped endpoint ids, the default grace and TTL), and
``INFO memory`` ``used_memory`` is read before and after, each time on a fresh connection
with the filling connections closed (so client buffers do not count). The breakdown uses
``MEMORY USAGE ... SAMPLES 0`` on a sample of identity hashes and on every index key."""

from __future__ import annotations

import asyncio
import random
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
from presence.keys import BUCKETS, Keyspace, due_member
from presence.twilio.samples import SERVICE_SID

OTHER_SID = "IS" + "0" * 32


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def used_memory(port: int) -> int:
    with Redis(port=port) as client:
        value: int = client.info("memory")["used_memory"]
        return value


def breakdown(port: int, n: int, sample: int = 2000) -> dict[str, Any]:
    keys = Keyspace("presence")
    rng = random.Random(11)
    names = [identity_name("user", rng.randrange(n)) for _ in range(sample)]
    with Redis(port=port, decode_responses=True) as client:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(
                keys.identity(keys.bucket_of(SERVICE_SID + name), SERVICE_SID, name), samples=0
            )
        hash_sizes = [size for size in pipe.execute() if size is not None]

        def total(key_of: Any) -> int:
            p = client.pipeline(transaction=False)
            for b in range(BUCKETS):
                p.memory_usage(key_of(b), samples=0)
            return sum(size or 0 for size in p.execute())

        online = total(lambda b: keys.online(b, SERVICE_SID))
        due = total(keys.due)
        counters = total(lambda b: keys.counters(b, SERVICE_SID))
        example = names[0]
        example_key = keys.identity(keys.bucket_of(SERVICE_SID + example), SERVICE_SID, example)
        bucket = keys.bucket_of(SERVICE_SID + example)
        fields = client.hgetall(example_key)
        info = {
            "dbsize": client.dbsize(),
            "example_key": example_key,
            "example_fields": fields,
            "hash_encoding": client.object("encoding", example_key),
            "online_zset_encoding": client.object("encoding", keys.online(bucket, SERVICE_SID)),
            "due_zset_encoding": client.object("encoding", keys.due(bucket)),
            "due_member_example": due_member(SERVICE_SID, example),
        }
    mean_hash = sum(hash_sizes) / len(hash_sizes)
    return {
        "identity_hash_bytes_each": round(mean_hash, 1),
        "identity_hashes_total": round(mean_hash * n),
        "online_index_total": online,
        "due_set_total": due,
        "counters_total": counters,
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
                b["identity_hashes_total"]
                + b["online_index_total"]
                + b["due_set_total"]
                + b["counters_total"]
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
