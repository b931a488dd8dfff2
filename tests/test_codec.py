"""An identity's state is kept in a few bytes (codec.lua): every endpoint, EventId and time
comes back exactly as it went in, on Redis (its struct library) and on the embedded store
(codec.lua's own packing)."""

from __future__ import annotations

import pytest

from presence.events import MAX_SAFE_INTEGER, ReachabilityEvent, parse_event
from presence.store.scripts import Client
from presence.twilio.samples import SERVICE_SID, reachability
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
