"""An identity's state is kept in a few bytes (codec.lua): every endpoint, EventId and time
comes back exactly as it went in, on Redis (its struct library) and on the embedded store
(codec.lua's own packing), from the layout written now (varints) and from the one the release
before wrote (fixed widths), which is read until the value is next written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fakeredis import FakeRedis, FakeServer
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.events import MAX_SAFE_INTEGER, ReachabilityEvent, parse_event
from presence.store.endpoints import packed_endpoint
from presence.store.scripts import Client
from presence.twilio.samples import SERVICE_SID, reachability
from tests import codec
from tests.codec import State
from tests.support import ManualClock, make_store

ENDPOINTS = [
    "3f2a5b7c-1234-4321-abcd-1234567890ab",  # a UUID: kept as 16 bytes
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "3F2A5B7C-1234-4321-ABCD-1234567890AB",  # upper case: kept as it is, not as a UUID
    "3f2a5b7c-1234-4321-abcd-1234567890ag",  # not hex
    "3f2a5b7c+1234-4321-abcd-1234567890ab",
    "x",
    "é" * 10,
    "a" * 254,
    "b" * 255,
    "c" * 1024,
]


@pytest.mark.parametrize("identity", ["alice", "é🙂", "x" * 1024])
async def test_endpoints_event_ids_and_times_come_back_exactly(
    backend: Client, clock: ManualClock, identity: str
) -> None:
    store = make_store(backend, clock, grace=1, ttl=3600)
    event_ids = [1, 255, 256, 65_536, 2**32, 2**40 + 7, MAX_SAFE_INTEGER - 20]
    sent = {}
    for n, endpoint in enumerate(ENDPOINTS):
        event_id = event_ids[n % len(event_ids)] + n
        params = reachability(identity, endpoint, event_id, True, connected=True)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        assert (await store.apply_reachability(event)).outcome.value == "applied"
        sent[endpoint] = (event_id, clock.now_ms)
        clock.advance(0.001 * (n + 1))

    stored = await store.inspect(SERVICE_SID, identity)

    assert stored.where == "page"
    assert {ep: (m.event_id, m.at_ms) for ep, m in stored.state.connected.items()} == sent
    presence = await store.identity(SERVICE_SID, identity)
    assert sorted(presence.endpoints) == sorted(ENDPOINTS)
    assert presence.last_event_id == max(e for e, _ in sent.values())
    await store.close()


async def test_hundreds_of_endpoints_and_tombstones_are_counted_past_one_byte(
    backend: Client, clock: ManualClock
) -> None:
    store = make_store(backend, clock)
    names = [f"{n:08x}-0000-4000-8000-{n:012x}" for n in range(300)]
    for n, endpoint in enumerate(names, start=1):
        event = parse_event(reachability("bob", endpoint, n, True, connected=True).items())
        assert isinstance(event, ReachabilityEvent)
        await store.apply_reachability(event)

    stored = await store.inspect(SERVICE_SID, "bob")

    assert sorted(stored.state.connected) == sorted(names)
    assert [stored.state.connected[ep].event_id for ep in names] == list(range(1, 301))
    await store.close()


# --- the layouts, directly (tests/codec.py) ------------------------------------------------

UUID_A, UUID_B = ENDPOINTS[0], "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NOW = 1_795_000_123_456
TTL = 7_200_000
BIG = MAX_SAFE_INTEGER  # 2^53 - 1: EventIds are exact up to there

FLAPPED = State(
    version=1,
    published_online=True,
    top_online=True,
    top=3,
    top_at=NOW + 40,
    changed_at=NOW,
    off_floor=2,
    off_endpoint=UUID_A,
    connected=[(UUID_A, 3, NOW + 40)],
)
"""Online after one rebalancing flap: disconnected (IsIdentityOnline=false), reconnected."""

STATES = {
    "never changed": State(top=5, top_at=NOW, tombstones=[("x", 5, NOW)]),
    "online, one UUID": State(
        version=1, published_online=True, top_online=True, top=1, top_at=NOW, changed_at=NOW,
        connected=[(UUID_A, 1, NOW)],
    ),
    "flapped": FLAPPED,
    "flapped, EventIds near 2^53": replace(
        FLAPPED, top=BIG, off_floor=BIG - 1, connected=[(UUID_A, BIG, NOW + 40)]
    ),
    "pending offline": State(
        version=7, published_online=True, top=2**40, top_at=NOW, changed_at=NOW - 86_400_000,
        deadline=NOW + 10_000, deadline_event=2**40, off_floor=2**40, off_endpoint=UUID_B,
        forgotten_floor=2**40 - 300, tombstones=[(UUID_B, 2**40, NOW)],
    ),
    "off endpoint no longer marked": replace(
        FLAPPED, off_endpoint="gone", connected=[(UUID_B, 3, NOW + 40)]
    ),
    "times before top_at, every endpoint shape": State(
        version=2**32 - 1, published_online=True, top=BIG, top_at=NOW, changed_at=1,
        connected=[(ep, BIG - n, NOW - 3_600_000 * n) for n, ep in enumerate(ENDPOINTS)],
        tombstones=[("t" * 300, 0, 0), ("é", BIG, NOW + 2**40)],
    ),
    "hundreds of marks": State(
        top=10_000, top_at=NOW,
        connected=[(f"{n:08x}-0000-4000-8000-{n:012x}", n, NOW - n) for n in range(200)],
        tombstones=[(f"e{n}", 10_000 - n, NOW + n) for n in range(64)],
    ),
}  # fmt: skip


@pytest.fixture(params=["redis", "embedded"])
def lua(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[SyncRedis]:
    """A client to EVAL codec.lua on: the suite's Redis (struct in C), or the embedded one
    (codec.lua's own packing)."""
    client: SyncRedis
    if request.param == "redis":
        client = SyncRedis.from_url(redis_server.url)
    else:
        client = FakeRedis(server=FakeServer())
    yield client
    client.close()


@pytest.mark.parametrize("name", list(STATES))
@pytest.mark.parametrize("due", [0, NOW + TTL, NOW - 5])
def test_every_field_comes_back_from_either_layout(lua: SyncRedis, name: str, due: int) -> None:
    state = STATES[name]
    for before in (False, True):
        value = codec.write(lua, state, due, before=before)
        assert (value[0] & 64 == 64) is not before  # the flag of this release's layout
        found = codec.read(lua, value)
        assert found.state == state.canonical(), before
        assert (found.due, found.version) == (due, state.version)
        assert found.answer == codec.expected_answer(state)


@pytest.mark.parametrize(
    "endpoint",
    [
        *ENDPOINTS,
        "3f2a5b7c-1234-4321-abcd-1234567890aB",
        "3f2a5b7c-1234-4321-abcd-1234567890a",  # one digit short
        "3f2a5b7c-1234-4321-abcd-1234567890abc",
        "3f2a5b7c1-234-4321-abcd-1234567890ab",  # a dash out of place
        "3f2a5b7c-1234-4321-abcd-12345678-0ab",
        "3f2a5b7c-1234-4321-abcd-1234567890a\u00e9",  # 36 characters, 37 bytes
        "\u0663f2a5b7c-1234-4321-abcd-1234567890a",  # a digit, but not an ASCII one
        "3f2a5b7c-1234-4321-abcd-1234567890ab\n",
        " 3f2a5b7c-1234-4321-abcd-1234567890a",
        "é" * 127,  # 254 bytes
        "é" * 128,
        "日本" * 170,
    ],
)
def test_the_service_packs_an_endpoint_as_the_codec_does(lua: SyncRedis, endpoint: str) -> None:
    """apply_event takes the EndpointId packed by the service (presence/store/endpoints.py):
    byte for byte what codec.lua's endpoint_bytes makes of it, and its text comes back."""
    script = codec.CURRENT + "\nlocal ep = endpoint_bytes(ARGV[1])\nreturn {ep, endpoint_text(ep)}"
    packed, text = lua.eval(script, 0, endpoint)
    assert packed_endpoint(endpoint) == packed
    assert text.decode() == endpoint


def test_a_flapped_identity_fits_a_listpack_value(lua: SyncRedis) -> None:
    """Redis keeps a page compact (a listpack) while every value is at most 64 bytes."""
    online = STATES["online, one UUID"]
    realistic = replace(FLAPPED, top=2**40 + 3, off_floor=2**40 + 2,
                        connected=[(UUID_A, 2**40 + 3, NOW + 40)])  # fmt: skip
    sizes = {
        name: (
            len(codec.write(lua, s, NOW + TTL)),
            len(codec.write(lua, s, NOW + TTL, before=True)),
        )
        for name, s in {"online": online, "flapped": FLAPPED, "flapped, big": realistic}.items()
    }
    assert sizes == {"online": (35, 62), "flapped": (37, 86), "flapped, big": (42, 86)}


async def test_values_of_the_layout_before_are_served_then_rewritten(
    redis: Redis, redis_server: RedisServer, clock: ManualClock
) -> None:
    """A page written by the release before: read as it is (a query, inspect, the listing,
    the sweeper's due), and in this release's layout from its next write on."""
    store = make_store(redis, clock, grace=10, ttl=3600)
    now = clock.now_ms
    pending = State(
        version=3, published_online=True, top=9, top_at=now - 1000, changed_at=now - 5000,
        deadline=now + 2000, deadline_event=9, off_floor=9, off_endpoint=UUID_B,
        tombstones=[(UUID_B, 9, now - 1000)],
    )  # fmt: skip
    online = State(
        version=1, published_online=True, top_online=True, top=4, top_at=now, changed_at=now,
        connected=[(UUID_A, 4, now)],
    )  # fmt: skip
    raw = SyncRedis.from_url(redis_server.url)

    def value_of(name: str) -> bytes:
        bucket, page = store.keys.place_of(SERVICE_SID, name)
        found: bytes = raw.hget(store.keys.page(bucket, SERVICE_SID, page), name)  # type: ignore[assignment]
        return found

    try:
        for name, state, due in (("bob", pending, now + 2000), ("alice", online, now + 3_600_000)):
            bucket, page = store.keys.place_of(SERVICE_SID, name)
            raw.hset(
                store.keys.page(bucket, SERVICE_SID, page),
                name,
                codec.write(raw, state, due, before=True),
            )
            raw.zadd(store.keys.due_pages(bucket), {f"{SERVICE_SID}:{page}": due}, lt=True)
            raw.hincrby(store.keys.counters(bucket, SERVICE_SID), "online", 1)
        raw.hincrby(
            store.keys.counters(store.keys.place_of(SERVICE_SID, "bob")[0], SERVICE_SID),
            "pending",
            1,
        )
        raw.set(store.keys.format, "2")
        assert [value_of(n)[0] & 64 for n in ("alice", "bob")] == [0, 0]

        bob, alice = await store.lookup(SERVICE_SID, ["bob", "alice"])
        assert (bob.online, bob.pending_offline, bob.version, bob.last_event_id) == (
            True,
            True,
            3,
            9,
        )
        assert (alice.online, list(alice.endpoints), alice.version) == (True, [UUID_A], 1)
        assert (await store.inspect(SERVICE_SID, "bob")).state.off_endpoint == UUID_B
        listed = await store.online(SERVICE_SID, limit=10, cursor=None, versions=True)
        assert sorted(zip(listed.identities, listed.versions or [], strict=True)) == [
            ("alice", 1), ("bob", 3)
        ]  # fmt: skip

        clock.advance(2.5)  # bob's deadline has passed: the sweeper reads when it is due
        swept = await store.sweep(128)
        assert [(c.identity, c.online, c.version) for c in swept.changes] == [("bob", False, 4)]
        event = parse_event(reachability("alice", UUID_B, 5, True, connected=True).items())
        assert isinstance(event, ReachabilityEvent)
        assert (await store.apply_reachability(event)).outcome.value == "applied"

        # Written again, in this release's layout, and read back whole.
        assert [value_of(n)[0] & 64 for n in ("alice", "bob")] == [64, 64]
        assert raw.get(store.keys.format) == b"3"  # marked: a release of format 2 stops
        alice_now = await store.inspect(SERVICE_SID, "alice")
        assert sorted(alice_now.state.connected) == sorted([UUID_A, UUID_B])
        assert (await store.inspect(SERVICE_SID, "bob")).state.published_online is False
        assert (await store.stats(SERVICE_SID)).online == 1
    finally:
        raw.close()
        await store.close()
