"""The presence rules (docs/presence.md), as what a user sees: on a real Redis,
the embedded store and a Redis Cluster.

Time is a manual clock handed to the store, and the sweeper's work is done by calling
``sweep`` by hand, so each scenario is exact about when things happen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from presence.events import ReachabilityEvent, parse_event
from presence.model import EventResult, IdentityPresence, Outcome
from presence.store.redis import RedisStore
from presence.timestamps import iso_from_ms
from presence.twilio.samples import SERVICE_SID, reachability
from presence.web.replies import identity_reply
from tests.support import ChangeRecorder, ManualClock, make_store

GRACE = 10
TTL = 60


class Scenario:
    """One identity's life, told as webhooks, clock moves and sweeps."""

    def __init__(self, store: RedisStore, clock: ManualClock, recorder: ChangeRecorder) -> None:
        self.store = store
        self.clock = clock
        self.recorder = recorder

    async def event(
        self, endpoint: str, event_id: int, online: bool, *, connected: bool, who: str = "alice"
    ) -> EventResult:
        params = reachability(who, endpoint, event_id, online, connected=connected)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        return await self.store.apply_reachability(event)

    async def connect(
        self, endpoint: str, event_id: int, online: bool = True, who: str = "alice"
    ) -> Outcome:
        return (await self.event(endpoint, event_id, online, connected=True, who=who)).outcome

    async def disconnect(
        self, endpoint: str, event_id: int, online: bool = False, who: str = "alice"
    ) -> Outcome:
        return (await self.event(endpoint, event_id, online, connected=False, who=who)).outcome

    async def later(self, seconds: float) -> None:
        """Time passes and the sweeper comes by."""
        self.clock.advance(seconds)
        while (await self.store.sweep(1024)).more:
            pass

    async def state(self, who: str = "alice") -> IdentityPresence:
        return await self.store.identity(SERVICE_SID, who)

    async def published(self) -> list[dict[str, Any]]:
        return await self.recorder.sync()

    def change(
        self, online: bool, reason: str, event_id: int | None, version: int, who: str = "alice"
    ) -> dict[str, Any]:
        """The message a change made at the current time would be."""
        return {
            "service_sid": SERVICE_SID,
            "identity": who,
            "online": online,
            "reason": reason,
            "event_id": event_id,
            "version": version,
            "changed_at": iso_from_ms(self.clock.now_ms),
        }


@pytest.fixture
async def scenario(backend: Redis, clock: ManualClock) -> AsyncIterator[Scenario]:
    store = make_store(backend, clock, grace=GRACE, ttl=TTL)
    async with ChangeRecorder(backend) as recorder:
        yield Scenario(store, clock, recorder)


async def test_connecting_publishes_online_at_once(scenario: Scenario) -> None:
    assert await scenario.connect("E1", 1) == Outcome.APPLIED

    assert await scenario.published() == [scenario.change(True, "connected", 1, 1)]
    state = await scenario.state()
    assert state.online
    assert not state.pending_offline
    assert state.endpoints == ("E1",)
    assert state.last_event_id == 1
    assert state.version == 1
    assert state.changed_at_ms == scenario.clock.now_ms


async def test_an_identity_never_seen_is_offline_at_version_zero(scenario: Scenario) -> None:
    state = await scenario.state("nobody")
    assert identity_reply(state) == {
        "service_sid": SERVICE_SID,
        "identity": "nobody",
        "online": False,
        "pending_offline": False,
        "endpoints": [],
        "last_event_id": None,
        "changed_at": None,
        "version": 0,
    }


async def test_a_rebalancing_flap_publishes_nothing(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    online = await scenario.published()

    assert await scenario.disconnect("E1", 2) == Outcome.APPLIED
    state = await scenario.state()
    assert state.online
    assert state.pending_offline
    await scenario.later(3)
    assert await scenario.connect("E2", 3) == Outcome.APPLIED
    await scenario.later(GRACE * 3)

    assert await scenario.published() == online
    state = await scenario.state()
    assert state.online
    assert not state.pending_offline
    assert state.endpoints == ("E2",)
    assert state.version == 1


async def test_a_flap_whose_connect_arrives_first_publishes_nothing(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.connect("E2", 3)
    assert await scenario.disconnect("E1", 2) == Outcome.APPLIED
    await scenario.later(GRACE * 3)

    assert len(await scenario.published()) == 1
    state = await scenario.state()
    assert state.online
    assert not state.pending_offline
    assert state.endpoints == ("E2",)


async def test_a_flap_reusing_the_endpoint_id_publishes_nothing(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.disconnect("E1", 2)
    await scenario.later(1)
    assert await scenario.connect("E1", 3) == Outcome.APPLIED
    await scenario.later(GRACE * 3)

    assert len(await scenario.published()) == 1
    assert (await scenario.state()).endpoints == ("E1",)


async def test_going_offline_is_published_once_at_the_deadline(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.disconnect("E1", 2)

    await scenario.later(GRACE - 0.1)
    assert len(await scenario.published()) == 1
    assert (await scenario.state()).pending_offline

    await scenario.later(0.1)
    offline = scenario.change(False, "disconnected", 2, 2)
    await scenario.later(GRACE)
    assert (await scenario.published())[1:] == [offline]
    state = await scenario.state()
    assert not state.online
    assert not state.pending_offline
    assert state.version == 2


async def test_with_no_grace_offline_is_published_at_once(
    backend: Redis, clock: ManualClock
) -> None:
    store = make_store(backend, clock, grace=0, ttl=TTL)
    async with ChangeRecorder(backend) as recorder:
        scenario = Scenario(store, clock, recorder)
        await scenario.connect("E1", 1)
        result = await scenario.event("E1", 2, False, connected=False)

        offline = scenario.change(False, "disconnected", 2, 2)
        assert [change.version for change in result.changes] == [2]
        assert (await scenario.published())[1:] == [offline]


async def test_a_late_connect_cannot_resurrect_an_identity(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.disconnect("E1", 2)
    await scenario.later(GRACE + 1)

    assert await scenario.connect("E1", 1) == Outcome.STALE
    assert await scenario.connect("E7", 1) == Outcome.STALE
    assert await scenario.connect("E7", 2) == Outcome.STALE

    assert [m["online"] for m in await scenario.published()] == [True, False]
    assert not (await scenario.state()).online


async def test_a_late_disconnect_cannot_take_down_a_newer_connect(scenario: Scenario) -> None:
    await scenario.connect("E2", 5)
    # E1's disconnect (EventId 3) was delayed: it says the identity was offline back then.
    assert await scenario.disconnect("E1", 3, online=False) == Outcome.APPLIED
    await scenario.later(GRACE * 2)

    state = await scenario.state()
    assert state.online
    assert not state.pending_offline
    assert state.endpoints == ("E2",)
    assert state.last_event_id == 5
    assert len(await scenario.published()) == 1


async def test_a_repeated_webhook_is_a_duplicate(scenario: Scenario) -> None:
    assert await scenario.connect("E1", 1) == Outcome.APPLIED
    assert await scenario.connect("E1", 1) == Outcome.DUPLICATE
    assert await scenario.disconnect("E1", 2) == Outcome.APPLIED
    assert await scenario.disconnect("E1", 2) == Outcome.DUPLICATE

    assert len(await scenario.published()) == 1


async def test_an_event_older_than_its_endpoints_last_is_stale(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.connect("E2", 2)
    await scenario.connect("E1", 4)
    assert await scenario.disconnect("E1", 3, online=True) == Outcome.STALE

    assert (await scenario.state()).endpoints == ("E1", "E2")


async def test_a_disconnected_endpoint_cannot_come_back_while_others_stay(
    scenario: Scenario,
) -> None:
    await scenario.connect("E1", 1)
    await scenario.connect("E2", 2)
    assert await scenario.disconnect("E1", 3, online=True) == Outcome.APPLIED
    assert await scenario.connect("E1", 1) == Outcome.STALE

    state = await scenario.state()
    assert state.online
    assert state.endpoints == ("E2",)


async def test_identity_online_counts_even_if_its_endpoint_was_never_seen(
    scenario: Scenario,
) -> None:
    # The connect of the endpoint keeping alice online was lost; IsIdentityOnline tells.
    assert await scenario.disconnect("E1", 7, online=True) == Outcome.APPLIED

    assert await scenario.published() == [scenario.change(True, "connected", 7, 1)]
    state = await scenario.state()
    assert state.online
    assert state.endpoints == ()


async def test_identity_offline_drops_every_older_endpoint(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.connect("E2", 2)
    # An endpoint never seen disconnects, and Twilio says nobody is left.
    assert await scenario.disconnect("E3", 3, online=False) == Outcome.APPLIED

    state = await scenario.state()
    assert state.endpoints == ()
    assert state.pending_offline
    assert await scenario.disconnect("E2", 2, online=True) == Outcome.STALE
    await scenario.later(GRACE)
    assert [m["online"] for m in await scenario.published()] == [True, False]


async def test_a_connect_that_says_identity_offline_does_not_make_it_online(
    scenario: Scenario,
) -> None:
    assert await scenario.connect("E1", 1, online=False) == Outcome.APPLIED

    assert await scenario.published() == []
    assert not (await scenario.state()).online


async def test_a_lost_disconnect_expires_after_the_ttl(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.later(TTL - 1)
    assert (await scenario.state()).online

    await scenario.later(1)
    expired = scenario.change(False, "expired", None, 2)
    await scenario.later(TTL)
    assert (await scenario.published())[1:] == [expired]
    state = await scenario.state()
    assert not state.online
    assert state.endpoints == ()


async def test_an_endpoint_named_again_does_not_expire(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.connect("E2", 2)
    await scenario.later(TTL / 2)
    await scenario.disconnect("E1", 3, online=True)
    await scenario.later(TTL / 2 + 1)

    # E2 was named only at the start: gone. The newer IsIdentityOnline=true has not aged out.
    state = await scenario.state()
    assert state.online
    assert state.endpoints == ()
    await scenario.later(TTL / 2)
    assert [m["reason"] for m in await scenario.published()] == ["connected", "expired"]


async def test_identity_online_evidence_expires_too(scenario: Scenario) -> None:
    await scenario.disconnect("E1", 7, online=True)
    await scenario.later(TTL)

    assert [m["reason"] for m in await scenario.published()] == ["connected", "expired"]


async def test_an_overdue_deadline_fires_before_a_late_reconnect(scenario: Scenario) -> None:
    await scenario.connect("E1", 1)
    await scenario.disconnect("E1", 2)
    # The sweeper has not come by, and the reconnect arrives well after the deadline.
    scenario.clock.advance(GRACE * 2)
    result = await scenario.event("E2", 3, True, connected=True)

    assert [(c.online, c.reason, c.version) for c in result.changes] == [
        (False, "disconnected", 2),
        (True, "connected", 3),
    ]
    assert [m["version"] for m in await scenario.published()] == [1, 2, 3]


async def test_versions_count_every_change_without_gaps(scenario: Scenario) -> None:
    event_id = 0
    for _ in range(4):
        event_id += 1
        await scenario.connect("E1", event_id)
        event_id += 1
        await scenario.disconnect("E1", event_id)
        await scenario.later(GRACE)

    published = await scenario.published()
    assert [m["version"] for m in published] == list(range(1, 9))
    assert [m["online"] for m in published] == [True, False] * 4
    assert (await scenario.state()).version == 8


async def test_identities_are_independent(scenario: Scenario) -> None:
    await scenario.connect("E1", 1, who="alice")
    await scenario.connect("E1", 1, who="bob")
    await scenario.disconnect("E1", 2, who="bob")
    await scenario.later(GRACE)

    assert (await scenario.state("alice")).online
    assert not (await scenario.state("bob")).online
    published = [(m["identity"], m["online"]) for m in await scenario.published()]
    # Each identity's changes arrive in order; those of identities on different Redis
    # Cluster nodes reach a subscriber in no set order between them.
    assert [change for change in published if change[0] == "alice"] == [("alice", True)]
    assert [change for change in published if change[0] == "bob"] == [
        ("bob", True),
        ("bob", False),
    ]


async def test_a_deadline_survives_a_restart_of_the_service(
    backend: Redis, clock: ManualClock
) -> None:
    before = make_store(backend, clock, grace=GRACE, ttl=TTL)
    async with ChangeRecorder(backend) as recorder:
        scenario = Scenario(before, clock, recorder)
        await scenario.connect("E1", 1)
        await scenario.disconnect("E1", 2)
        # A new process: nothing is shared with the old one but Redis.
        scenario.store = make_store(backend, clock, grace=GRACE, ttl=TTL)
        await scenario.later(GRACE)
        await scenario.later(GRACE)

        assert [m["online"] for m in await scenario.published()] == [True, False]


async def test_many_tombstones_stay_bounded_and_still_refuse_old_events(
    scenario: Scenario,
) -> None:
    await scenario.connect("keeper", 1)
    event_id = 1
    for n in range(100):
        event_id += 1
        await scenario.connect(f"tab-{n}", event_id)
        event_id += 1
        await scenario.disconnect(f"tab-{n}", event_id, online=True)

    stored = await scenario.store.inspect(SERVICE_SID, "alice")
    assert len(stored.state.tombstones) == 64
    assert await scenario.connect("tab-0", 2) == Outcome.STALE
    assert (await scenario.state()).endpoints == ("keeper",)


async def test_an_identity_with_hundreds_of_tabs_goes_offline_in_one_event(
    scenario: Scenario,
) -> None:
    for n in range(1, 601):
        await scenario.connect(f"tab-{n}", n)
    assert len((await scenario.state()).endpoints) == 600

    # One script drops all 600 endpoints (more than one HDEL slice).
    assert await scenario.disconnect("tab-600", 601, online=False) == Outcome.APPLIED

    state = await scenario.state()
    assert state.endpoints == ()
    assert state.pending_offline
    stats = await scenario.store.stats(SERVICE_SID)
    assert stats.endpoints == 0


async def test_an_expired_endpoint_cannot_come_back_with_an_old_event(scenario: Scenario) -> None:
    await scenario.connect("E1", 5)
    await scenario.later(TTL + 1)

    # Twilio retries the connect it had sent long ago, then an older one arrives.
    assert await scenario.connect("E1", 5) == Outcome.STALE
    assert await scenario.connect("E1", 3) == Outcome.STALE
    assert await scenario.connect("E9", 4) == Outcome.STALE

    assert [m["reason"] for m in await scenario.published()] == ["connected", "expired"]
    assert not (await scenario.state()).online


async def test_expired_online_evidence_cannot_be_revived_by_an_older_event(
    scenario: Scenario,
) -> None:
    await scenario.disconnect("E1", 10, online=True)
    await scenario.later(TTL + 1)

    assert await scenario.connect("E2", 8) == Outcome.STALE
    assert await scenario.connect("E2", 11) == Outcome.APPLIED

    assert [m["reason"] for m in await scenario.published()] == [
        "connected",
        "expired",
        "connected",
    ]
