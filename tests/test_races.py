"""Three ``presence serve`` processes on one real Redis, racing on the same identities.

Every identity gets a realistic history (fresh increasing EventIds, IsIdentityOnline true
exactly while one of its endpoints is connected, rebalancing flaps). The webhooks of all of
them are interleaved, each arriving a few places early or late, a quarter sent twice (some
only in a later wave), spread at random over the three processes, 30 in flight at a time, in
three waves with the grace passing between them (so offlines are really published).

What the end state must be, whatever the order of arrival (checked on the model by
``test_final_state_is_determined_by_the_events_not_their_order``): for each identity, which
endpoints are connected, whether it is online once the grace has passed, and its last EventId.
How many changes were published on the way is *not* determined: it depends on the order of
arrival and on timing (a flap whose halves arrive more than the grace apart, here across two
waves, publishes an offline and an online that in-order delivery within the grace does not).
So the version is checked against what was published (gapless 1..n, in order, alternating
online/offline from online: odd exactly when online), not against one replay of the model.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer, Service
from presence.rules import Event, Model
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, ChangeRecorder, post_webhook, wait_until

pytestmark = pytest.mark.slow  # three `presence serve` processes racing

GRACE_SECONDS = 1
PREFIX = "races"
IDENTITIES = 15
EVENTS_PER_IDENTITY = 18
REPEATED = 0.25
"""Share of the webhooks Twilio sends twice."""
IN_FLIGHT = 30
WAVES = 3
JITTER = 4.0
"""How many places (within one identity's wave) an event may arrive early or late."""
SEED = 20261123


@pytest.fixture
def services(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> Iterator[list[Service]]:
    """Three service processes on the suite's Redis (emptied first), killed afterwards."""
    started: list[Service] = []
    try:
        for n in range(3):
            service = Service(
                tmp_path / f"service-{n}.log",
                redis_url=redis_server.url,
                twilio_auth_token=AUTH_TOKEN,
                offline_grace_seconds=str(GRACE_SECONDS),
                key_prefix=PREFIX,
            )
            started.append(service)
            service.start()
        yield started
    finally:
        for service in started:
            service.kill()


def history(identity: str, rng: random.Random) -> list[Event]:
    """One identity's life as Twilio tells it: connects, disconnects, rebalancing flaps."""
    events: list[Event] = []
    connected: set[str] = set()
    endpoints = 0
    event_id = rng.randrange(1, 1000)

    def add(endpoint: str, is_connect: bool) -> None:
        nonlocal event_id
        event_id += rng.randrange(1, 4)
        if is_connect:
            connected.add(endpoint)
        else:
            connected.discard(endpoint)
        events.append(Event(identity, endpoint, event_id, bool(connected), is_connect))

    while len(events) < EVENTS_PER_IDENTITY:
        choice = rng.random()
        if not connected or (choice < 0.3 and len(connected) < 3):
            endpoints += 1
            add(f"{identity}-EP{endpoints}", True)
        elif choice < 0.6:
            # The hourly rebalancing: one endpoint drops, and reconnects as a new one.
            add(rng.choice(sorted(connected)), False)
            endpoints += 1
            add(f"{identity}-EP{endpoints}", True)
        else:
            add(rng.choice(sorted(connected)), False)
    return events


def final_state(events: list[Event]) -> dict[str, tuple[bool, tuple[str, ...], int | None]]:
    """(online, endpoints, last EventId) of each identity once everything arrived and the
    grace passed, by the model, delivering ``events`` in this order at one moment."""
    model = Model(SERVICE_SID, grace_ms=GRACE_SECONDS * 1000, ttl_ms=7200 * 1000)
    for event in events:
        model.deliver(event, 0)
    model.sweep(GRACE_SECONDS * 1000)
    return {
        name: (s.published_online, tuple(sorted(s.connected)), s.top)
        for name, s in model.identities.items()
    }


async def lookup(service: Service, names: list[str]) -> list[dict[str, Any]]:
    url = f"{service.url}/v1/services/{SERVICE_SID}/lookup"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"identities": names}) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        found: list[dict[str, Any]] = body["identities"]
        return found


def test_final_state_is_determined_by_the_events_not_their_order() -> None:
    """The claim the race test rests on, checked on the model: for complete, consistent
    histories, any order of arrival, with repeats, gives the same final state."""
    rng = random.Random(SEED)
    events = [e for n in range(IDENTITIES) for e in history(f"user{n:02d}", rng)]
    expected = final_state(events)
    for _ in range(50):
        arrivals = events + rng.sample(events, len(events) // 4)
        rng.shuffle(arrivals)
        assert final_state(arrivals) == expected


def waves_of_arrivals(events: list[Event], rng: random.Random) -> list[list[Event]]:
    """The webhooks as they arrive, in ``WAVES`` waves (each identity's history cut in
    consecutive parts): identities interleaved at random, each event a few places late or
    early, some sent again a little later (possibly in a later wave)."""
    per_identity: dict[str, list[Event]] = {}
    for event in events:
        per_identity.setdefault(event.identity, []).append(event)
    keyed: list[list[tuple[float, Event]]] = [[] for _ in range(WAVES)]
    for mine in per_identity.values():
        size = -(-len(mine) // WAVES)
        for position, event in enumerate(mine):
            wave = position // size
            key = position % size + rng.uniform(0, JITTER)
            keyed[wave].append((key, event))
            if rng.random() < REPEATED:
                later = min(WAVES - 1, wave + (rng.random() < 0.2))
                keyed[later].append((key + rng.uniform(0, 2 * JITTER), event))
    return [[event for _, event in sorted(wave, key=lambda pair: pair[0])] for wave in keyed]


async def test_three_replicas_agree_on_reordered_repeated_interleaved_events(
    services: list[Service], redis: Redis
) -> None:
    rng = random.Random(SEED)
    names = [f"user{n:02d}" for n in range(IDENTITIES)]
    events = [e for name in names for e in history(name, rng)]
    waves = waves_of_arrivals(events, rng)
    arrivals = [event for wave in waves for event in wave]
    expected = final_state(events)
    gate = asyncio.Semaphore(IN_FLIGHT)
    replies: list[str] = []

    async def deliver(event: Event, service: Service) -> None:
        params = reachability(
            event.identity, event.endpoint, event.event_id, event.online, connected=event.connected
        )
        async with gate:
            status, body = await post_webhook(service.url, params)
        assert status == 200, body
        replies.append(body["status"])

    async def settled() -> bool:
        states = await lookup(services[0], names)
        return not any(state["pending_offline"] for state in states)

    async with ChangeRecorder(redis, f"{PREFIX}:changes") as recorder:
        for wave in waves:
            await asyncio.gather(*(deliver(event, rng.choice(services)) for event in wave))
            # The grace of every offline of the wave passes, and one of the three sweepers
            # publishes it: the next wave finds these identities offline.
            await wait_until(settled, GRACE_SECONDS + 10, "every pending offline to fire")
        published = await recorder.sync()

    print(
        f"races: {len(arrivals)} webhooks ({len(events)} events), replies "
        f"{ {status: replies.count(status) for status in sorted(set(replies))} }, "
        f"{len(published)} changes published"
    )
    assert len(replies) == len(arrivals)
    assert set(replies) <= {"applied", "duplicate", "stale"}
    # Every repeat of an event that was applied is a duplicate or stale, never applied twice.
    assert replies.count("applied") <= len(events)

    states = {state["identity"]: state for state in await lookup(services[1], names)}
    event_ids = {name: {e.event_id for e in events if e.identity == name} for name in names}
    for name in names:
        state = states[name]
        online, endpoints, last_event_id = expected[name]
        assert (state["online"], tuple(state["endpoints"]), state["last_event_id"]) == (
            online,
            endpoints,
            last_event_id,
        ), name
        assert state["pending_offline"] is False, name

        mine = [m for m in published if m["identity"] == name]
        # Versions gapless from 1 and in order on the channel: each change published once.
        assert [m["version"] for m in mine] == list(range(1, len(mine) + 1)), name
        assert state["version"] == len(mine), name
        # Online and offline alternate, starting online: no transition published twice.
        assert [m["online"] for m in mine] == [n % 2 == 0 for n in range(len(mine))], name
        assert (state["version"] % 2 == 1) == online, name
        for message in mine:
            assert message["service_sid"] == SERVICE_SID
            assert message["reason"] == ("connected" if message["online"] else "disconnected")
            assert message["event_id"] in event_ids[name], message
