"""Storage format 2 on a Redis filled by the release before it (tests/data/format1: its
dump.rdb and what that release answered): migrated on start or by ``presence migrate``, every
identity keeps every field the rules use, and answers and behaves as before."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from harness.processes import RedisServer, Service, service_env
from presence import rules
from presence.events import ReachabilityEvent, parse_event
from presence.feed.cursor import FeedCursor, Position, history_of, history_term
from presence.keys import BUCKETS, FORMAT, Keyspace
from presence.store.migrate import FormatError
from presence.store.redis import RedisStore
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, ManualClock, make_store
from tests.test_model import by_identity

DATA = Path(__file__).parent / "data" / "format1"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = EXPECTED["services"]
GRACE_S, TTL_S = EXPECTED["grace_ms"] / 1000, EXPECTED["ttl_ms"] / 1000


@pytest.fixture
def old_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server started on the previous release's dump.rdb."""
    directory = tmp_path / "redis"
    directory.mkdir()
    shutil.copy(DATA / "dump.rdb", directory / "dump.rdb")
    server = RedisServer(directory).start()
    try:
        # The dump's keys carry no expiry (tests/data/format1/make.py): each gets the time to
        # live it had when the dump was written, counted from now, so the test reads the data
        # as the previous release left it, on any day.
        with SyncRedis.from_url(server.url, decode_responses=True) as redis:
            # Nothing in the dump has a time of its own that Redis would act on.
            assert [key for key in redis.scan_iter() if redis.pttl(key) != -1] == []
            for key, ttl_ms in EXPECTED["expiries_ms"].items():
                assert redis.pexpire(key, ttl_ms), key
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(old_redis: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(old_redis.url, decode_responses=True)
    yield redis
    await redis.aclose()


def store_on(client: Redis, clock: ManualClock | None = None) -> RedisStore:
    clock = clock or ManualClock(EXPECTED["now_ms"])
    return make_store(client, clock, grace=GRACE_S, ttl=TTL_S)


def identity_of(name: str, stored: dict[str, str]) -> rules.Identity:
    """What the previous release's hash of an identity says, by the rules' names (its
    fields, as that release's presence/store/fields.py named them)."""

    def number(field: str) -> int | None:
        return int(stored[field]) if field in stored else None

    def marks(prefix: str) -> dict[str, rules.Mark]:
        found = {}
        for field, value in stored.items():
            if field.startswith(prefix):
                event_id, at = value.split(":")
                found[field[len(prefix) :]] = rules.Mark(int(event_id), int(at))
        return found

    return rules.Identity(
        name,
        connected=marks("e:"),
        tombstones=marks("t:"),
        forgotten_floor=number("tf"),
        off_floor=number("off"),
        off_endpoint=stored.get("oe"),
        top=number("top"),
        top_online=stored.get("ton") == "1",
        top_at=number("tat") or 0,
        published_online=stored.get("on") == "1",
        version=number("v") or 0,
        changed_at=number("ca"),
        deadline=number("dl"),
        deadline_event=number("de"),
    )


async def format1_keys(client: Redis) -> list[str]:
    keys = Keyspace()
    found = [key async for key in client.scan_iter(match=keys.v1_identities())]
    found += [key async for key in client.scan_iter(match=keys.v1_onlines())]
    for bucket in range(BUCKETS):
        if await client.exists(keys.v1_due(bucket)):
            found.append(keys.v1_due(bucket))
    return found


async def feed_lengths(client: Redis) -> list[int]:
    keys = Keyspace()
    return [await client.xlen(keys.feed(b, sid)) for sid in SERVICES for b in range(BUCKETS)]


async def check_as_before(store: RedisStore) -> None:
    """Every identity, stats and listing as the previous release answered them, and every
    field the rules use as it stored them."""
    for sid, service in SERVICES.items():
        names = sorted(service["identities"])
        found = await store.lookup(sid, names)
        for name, presence in zip(names, found, strict=True):
            recorded = service["identities"][name]
            assert {
                "online": presence.online,
                "pending_offline": presence.pending_offline,
                "endpoints": sorted(presence.endpoints),
                "last_event_id": presence.last_event_id,
                "changed_at_ms": presence.changed_at_ms,
                "version": presence.version,
            } == {**recorded["presence"], "endpoints": sorted(recorded["presence"]["endpoints"])}
            stored = await store.inspect(sid, name)
            assert stored.where == "page", name
            assert stored.state == identity_of(name, recorded["stored"]), name
        stats = await store.stats(sid)
        assert [stats.online, stats.pending_offline, stats.endpoints] == service["stats"]
        listed: list[str] = []
        cursor = None
        while True:
            listing = await store.online(sid, 50, cursor)
            listed += listing.identities
            cursor = listing.next_cursor
            if cursor is None:
                break
        wanted = [n for n, r in service["identities"].items() if r["presence"]["online"]]
        assert sorted(listed) == sorted(wanted)


async def test_a_redis_of_the_previous_release_is_migrated_and_answers_as_before(
    client: Redis,
) -> None:
    assert await client.get(Keyspace().format) is None
    fed = await feed_lengths(client)
    store = store_on(client)
    migration = await store.prepare()

    total = sum(len(service["identities"]) for service in SERVICES.values())
    assert migration is not None
    assert (migration.found, migration.moved, migration.kept) == (total, total, 0)
    assert await client.get(Keyspace().format) == FORMAT
    assert await format1_keys(client) == []
    assert await feed_lengths(client) == fed, "the change feed is kept as it is"
    await check_as_before(store)
    await store.close()
    # The feed's entries written before (each the whole message, without a number: the count
    # of a bucket before them is 0) read as the new ones, from the start of time. (A store
    # that keeps changes for ever: the fixture's are as old as the fixture.)
    store = make_store(client, None, retention=10**10)
    await store.read_feed(SERVICE_SID, None, limit=1)  # every bucket's epoch made
    keys = Keyspace()
    epochs = [await client.get(keys.epoch(b)) for b in range(BUCKETS)]
    history = history_of([history_term(b, str(epoch), 0) for b, epoch in enumerate(epochs)])
    start = FeedCursor(Position(0, 0, 0), history)
    read = await store.read_feed(SERVICE_SID, start, limit=1000)
    assert read.reset is None
    assert len(read.entries) > 100
    for entry in read.entries:
        change = json.loads(entry.message)
        assert (change["service_sid"], change["identity"]) == (SERVICE_SID, entry.identity)
        assert change["identity"] in SERVICES[SERVICE_SID]["identities"]
    await store.close()


async def test_after_the_migration_identities_follow_the_rules_from_where_they_were(
    client: Redis,
) -> None:
    """The model, given each identity as the previous release stored it, and the migrated
    store agree on what later events, stale ones below the old floors included, and the
    passage of time do."""
    clock = ManualClock(EXPECTED["now_ms"])
    store = store_on(client, clock)
    await store.prepare()
    model = rules.Model(SERVICE_SID, EXPECTED["grace_ms"], EXPECTED["ttl_ms"])
    service = SERVICES[SERVICE_SID]
    for name, recorded in service["identities"].items():
        model.identities[name] = identity_of(name, recorded["stored"])

    async def both(event: rules.Event) -> None:
        params = reachability(
            event.identity, event.endpoint, event.event_id, event.online, connected=event.connected
        )
        parsed = parse_event(params.items())
        assert isinstance(parsed, ReachabilityEvent)
        actual = await store.apply_reachability(parsed)
        wanted = model.deliver(event, clock.now_ms)
        assert actual == wanted, event

    names = sorted(service["identities"])
    for n, name in enumerate(names):
        top = service["identities"][name]["presence"]["last_event_id"] or 0
        state = model.get(name)
        # Below its floors (stale), its last event again, then a new connect and disconnect.
        await both(rules.Event(name, "late", max(1, top - 1), True, True))
        await both(rules.Event(name, next(iter(state.connected), "e0"), top, True, True))
        await both(rules.Event(name, f"new-{n}", top + 1, True, True))
        if n % 2:
            await both(rules.Event(name, f"new-{n}", top + 2, False, False))
    for seconds in (GRACE_S, TTL_S, TTL_S):
        clock.advance(seconds)
        changes = []
        while True:
            swept = await store.sweep(1000)
            changes += [c for c in swept.changes if c.service_sid == SERVICE_SID]
            if not swept.more:
                break
        wanted, _ = model.sweep(clock.now_ms)
        assert by_identity(changes) == by_identity(wanted)
    for name in names:
        stored = await store.inspect(SERVICE_SID, name)
        assert stored.state == model.get(name), name
    await store.close()


async def test_replicas_migrating_at_once_move_each_identity_once(client: Redis) -> None:
    stores = [store_on(client) for _ in range(3)]
    migrations = await asyncio.gather(*(s.migrate() for s in stores))

    total = sum(len(service["identities"]) for service in SERVICES.values())
    assert sum(m.moved for m in migrations) == total
    assert all(m.kept == 0 for m in migrations)
    await check_as_before(stores[0])
    # Once more, on the migrated Redis: nothing to do.
    again = await stores[0].migrate()
    assert (again.found, again.format_before) == (0, FORMAT)
    for store in stores:
        await store.close()


async def test_a_replica_of_the_old_release_still_writing_stops_the_start(
    client: Redis,
) -> None:
    """Format-1 keys after the migration mean an old replica is still running: a new one
    refuses to start, and ``presence migrate`` (once the old one is stopped) moves what it
    wrote, the newer state of an identity already in its page winning."""
    store = store_on(client)
    await store.prepare()
    keys = store.keys
    recorded = SERVICES[SERVICE_SID]["identities"]
    # What the old release writes for an identity it has never seen, and for one it sees
    # as new (the migrated one being in a page it does not read).
    newcomer, migrated = "newcomer", sorted(recorded)[0]
    for name in (newcomer, migrated):
        bucket = keys.place_of(SERVICE_SID, name)[0]
        await client.hset(
            keys.v1_identity(bucket, SERVICE_SID, name),
            mapping={
                "v": "1",
                "on": "1",
                "ca": "5",
                "top": "9",
                "ton": "1",
                "tat": "5",
                "e:E1": "9:5",
            },
        )
        await client.zadd(keys.v1_online(bucket, SERVICE_SID), {name: 0})
        await client.zadd(keys.v1_due(bucket), {SERVICE_SID + name: 5 + TTL_S * 1000})
        await client.hincrby(keys.counters(bucket, SERVICE_SID), "online", 1)
        await client.hincrby(keys.counters(bucket, SERVICE_SID), "endpoints", 1)

    with pytest.raises(FormatError, match="still running"):
        await store_on(client).prepare()

    migration = await store.migrate()
    assert (migration.found, migration.moved, migration.kept) == (2, 1, 1)
    assert await format1_keys(client) == []
    fresh = store_on(client)
    assert await fresh.prepare() is None
    moved = await fresh.identity(SERVICE_SID, newcomer)
    assert (moved.online, moved.endpoints, moved.version) == (True, ("E1",), 1)
    kept = await fresh.inspect(SERVICE_SID, migrated)
    assert kept.state == identity_of(migrated, recorded[migrated]["stored"])
    stats = await fresh.stats(SERVICE_SID)
    wanted = SERVICES[SERVICE_SID]["stats"]
    assert [stats.online, stats.pending_offline, stats.endpoints] == [
        wanted[0] + 1,
        wanted[1],
        wanted[2] + 1,
    ]
    for s in (store, fresh):
        await s.close()


async def test_a_newer_format_is_refused(client: Redis) -> None:
    await client.set(Keyspace().format, str(int(FORMAT) + 1))
    store = store_on(client)
    with pytest.raises(FormatError, match="newer"):
        await store.prepare()
    with pytest.raises(FormatError):
        await store.migrate()
    await store.close()


async def test_a_keyspace_of_format_2_is_marked_format_3_and_nothing_moves(
    redis: Redis, clock: ManualClock
) -> None:
    """Format 2's values are read as they are (tests/test_codec.py): a replica starting on
    such a keyspace only marks it, so that a release of format 2 no longer starts on it."""
    keys = Keyspace()
    store = make_store(redis, clock)
    event = parse_event(reachability("alice", "E1", 1, True, connected=True).items())
    assert isinstance(event, ReachabilityEvent)
    await store.apply_reachability(event)
    await redis.set(keys.format, "2")
    bucket, page = keys.place_of(SERVICE_SID, "alice")
    before = await redis.dump(keys.page(bucket, SERVICE_SID, page))
    fresh = make_store(redis, clock)
    assert await fresh.prepare() is None  # no migration
    assert await redis.get(keys.format) == FORMAT == "3"
    assert await redis.dump(keys.page(bucket, SERVICE_SID, page)) == before
    for s in (store, fresh):
        await s.close()


async def test_serve_migrates_on_start(old_redis: RedisServer, tmp_path: Path) -> None:
    service = Service(
        tmp_path / "serve.log",
        redis_url=old_redis.url,
        twilio_auth_token=AUTH_TOKEN,
        offline_grace_seconds=str(GRACE_S),
        endpoint_ttl_seconds=str(TTL_S),
    ).start()
    try:
        # Its clock is today's, past every TTL of the recorded history: its sweeper expires
        # the online identities at once. An offline one keeps its version and EventId.
        name = next(
            n
            for n, r in sorted(SERVICES[SERVICE_SID]["identities"].items())
            if not r["presence"]["online"]
        )
        url = f"{service.url}/v1/services/{SERVICE_SID}/identities/{quote(name, safe='')}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            reply = await response.json()
        recorded = SERVICES[SERVICE_SID]["identities"][name]["presence"]
        assert (reply["version"], reply["last_event_id"]) == (
            recorded["version"],
            recorded["last_event_id"],
        )
        assert f"migrated to storage format {FORMAT}" in service.output()
    finally:
        service.stop()


def test_presence_migrate_and_a_refused_start_say_what_they_did(
    old_redis: RedisServer, tmp_path: Path
) -> None:
    env = service_env(port="0", redis_url=old_redis.url, twilio_auth_token=AUTH_TOKEN)
    done = subprocess.run(
        [sys.executable, "-m", "presence", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary = json.loads(done.stdout)
    total = sum(len(service["identities"]) for service in SERVICES.values())
    assert (summary["found"], summary["moved"], summary["format_before"]) == (total, total, None)

    subprocess.run(
        ["redis-cli", "-p", str(old_redis.port), "SET", "presence:format", "9"],
        check=True,
        capture_output=True,
    )
    refused = subprocess.run(
        [sys.executable, "-m", "presence", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "storage format 9" in refused.stderr
