"""Makes ``dump.rdb`` and ``expected.json``: a Redis filled by the release before storage
format 2 (commit 2e12842, format 1: a hash per identity, an online index per bucket and
service, a due set per bucket), for tests/test_migrate.py.

Run it with that release's code first on the path, from a checkout of the repository::

    git worktree add /tmp/format1 2e12842
    PYTHONPATH=/tmp/format1 .venv/bin/python tests/data/format1/make.py

It plays a seeded history through the release's own store on a fresh redis-server (a manual
clock, so the times are the same at every run): identities of two services with several
endpoints, tombstones, floors raised by forgotten endpoints, pending offlines, expiries,
offline and never-online identities, names that need escaping, and collection events; then
it saves the Redis as ``dump.rdb`` (every key without its expiry, which would pass while the
file waits: the times to live are written beside it) and writes, for each identity, the hash
the release stored and what its lookup answered, with the stats and the clock, as
``expected.json``.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import uuid
from pathlib import Path

from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.events import CollectionEvent, ReachabilityEvent, parse_event
from presence.keys import Keyspace
from presence.store.redis import RedisStore
from presence.twilio.samples import SERVICE_SID, collection_event, reachability

HERE = Path(__file__).parent
OTHER_SID = "IS" + "0123456789abcdef" * 2
START_MS = 1_795_000_000_000
GRACE_MS, TTL_MS = 10_000, 3_600_000
NAMES = [f"user-{n:03}" for n in range(240)] + [
    "a{b}c",
    "x:{y}:z",
    "é" * 40,
    "with space",
    '"quoted"',
    "émoji-🙂",
]


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


async def play(url: str) -> dict[str, object]:
    clock = Clock()
    client = Redis.from_url(url, decode_responses=True)
    store = RedisStore(
        client, Keyspace(), offline_grace_ms=GRACE_MS, endpoint_ttl_ms=TTL_MS, clock=clock
    )
    rng = random.Random(20261201)
    next_id: dict[tuple[str, str], int] = {}
    connected: dict[tuple[str, str], list[str]] = {}
    people = [(SERVICE_SID, name) for name in NAMES] + [(OTHER_SID, f"o-{n}") for n in range(60)]

    async def send(
        sid: str, name: str, endpoint: str, event_id: int, online: bool, up: bool
    ) -> None:
        params = reachability(name, endpoint, event_id, online, connected=up, service_sid=sid)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        await store.apply_reachability(event)

    for step in range(4000):
        sid, name = rng.choice(people)
        key = (sid, name)
        eps = connected.setdefault(key, [])
        event_id = next_id.get(key, rng.randrange(1, 50)) + rng.randrange(1, 4)
        next_id[key] = event_id
        roll = rng.random()
        if roll < 0.45 or not eps:
            endpoint = (
                f"ep-{rng.randrange(10**6):06}"
                if rng.random() < 0.5
                else str(uuid.UUID(int=rng.getrandbits(128)))
            )
            eps.append(endpoint)
            await send(sid, name, endpoint, event_id, True, True)
        elif roll < 0.85:
            endpoint = eps.pop(rng.randrange(len(eps)))
            await send(sid, name, endpoint, event_id, bool(eps), False)
        elif roll < 0.93:
            # A late or repeated event: stale or duplicate.
            await send(
                sid, name, f"late-{step}", max(1, event_id - rng.randrange(1, 30)), True, True
            )
        else:
            # Many short-lived tabs: tombstones over the cap raise the forgotten floor.
            for _ in range(rng.randrange(1, 80)):
                event_id += 1
                await send(sid, name, f"tab-{event_id}", event_id, True, True)
                event_id += 1
                await send(sid, name, f"tab-{event_id - 1}", event_id, bool(eps), False)
            next_id[key] = event_id
        clock.now_ms += rng.choice([0, 1, 5, 100, 1_000, 4_000])
        if step % 500 == 499:
            clock.now_ms += rng.choice([GRACE_MS, TTL_MS // 2, TTL_MS + 1])
            while (await store.sweep(1000)).more:
                pass
    # The end: some identities wait out their grace (pending offline), one was only ever seen
    # going offline (version 0), and none of it has been swept.
    pending = [key for key in people if connected.get(key)][:12]
    for sid, name in pending:
        eps = connected[(sid, name)]
        while eps:
            next_id[(sid, name)] += 1
            endpoint = eps.pop()
            await send(sid, name, endpoint, next_id[(sid, name)], bool(eps), False)
    await send(SERVICE_SID, "ghost", "ep-ghost", 7, False, False)
    people.append((SERVICE_SID, "ghost"))
    clock.now_ms += 1_000
    for event_type in ("document_created", "list_item_added", "map_item_updated"):
        collection = parse_event(collection_event(event_type).items())
        assert isinstance(collection, CollectionEvent)
        await store.record(collection, f"token-{event_type}")

    expected: dict[str, object] = {"now_ms": clock.now_ms, "grace_ms": GRACE_MS, "ttl_ms": TTL_MS}
    services: dict[str, object] = {}
    for sid in (SERVICE_SID, OTHER_SID):
        names = sorted(name for s, name in people if s == sid)
        found = await store.lookup(sid, names)
        keys = store.keys
        identities = {}
        for presence in found:
            bucket = keys.bucket_of(sid + presence.identity)
            identities[presence.identity] = {
                "stored": await client.hgetall(keys.identity(bucket, sid, presence.identity)),
                "presence": {
                    "online": presence.online,
                    "pending_offline": presence.pending_offline,
                    "endpoints": list(presence.endpoints),
                    "last_event_id": presence.last_event_id,
                    "changed_at_ms": presence.changed_at_ms,
                    "version": presence.version,
                },
            }
        stats = await store.stats(sid)
        services[sid] = {
            "identities": identities,
            "stats": [stats.online, stats.pending_offline, stats.endpoints],
        }
    expected["services"] = services
    # Keys that expire (the change feed, idempotency tokens, seen sets) would be gone from the
    # dump a day later: kept without an expiry, their times to live go beside it, and the test
    # sets them again counted from its own start (tests/test_migrate.py: old_redis).
    expiries: dict[str, int] = {}
    async for key in client.scan_iter():
        ttl = await client.pttl(key)
        if ttl > 0:
            expiries[key] = ttl
            await client.persist(key)
    expected["expiries_ms"] = dict(sorted(expiries.items()))
    await client.save()
    await store.close()
    await client.aclose()
    return expected


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="format1-"))
    redis = RedisServer(directory).start()
    try:
        expected = asyncio.run(play(redis.url))
    finally:
        redis.stop()
    shutil.copy(directory / "dump.rdb", HERE / "dump.rdb")
    (HERE / "expected.json").write_text(
        json.dumps(expected, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    )
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
