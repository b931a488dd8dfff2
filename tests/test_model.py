"""The real store against the presence rules (presence/rules.py), on the suite's real Redis.

A Hypothesis state machine sends the same random histories to both: connects and disconnects
with fresh EventIds, IsIdentityOnline consistent with what Twilio knows or not, lost events,
exact repeats and late re-deliveries of past events, clock moves around the grace and the TTL,
and sweeps. After every step the outcome, the changes (returned, and published on both pub/sub
channels), every identity's state, the counters, the online index and the due set must agree;
the real stats() and online() queries (which add up all 128 buckets) at the end of every
example. Failing histories it found are pinned below as plain tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence import rules
from presence.events import MAX_SAFE_INTEGER, ReachabilityEvent, parse_event
from presence.keys import page_member
from presence.model import Change, EventResult, Outcome
from presence.rules import Event, Model
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import make_store, manual_clock

pytestmark = pytest.mark.slow  # thousands of Hypothesis steps against the rules

T = TypeVar("T")

GRACE = 10
TTL = 60
IDENTITIES = ("alice", "bob", "carol")
ENDPOINTS = ("E1", "E2", "E3", "E4")

CI = bool(os.environ.get("CI"))
MAX_EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "150"))
"""About 5 ms a step: 150 + 37 examples of up to 40 steps take 35-45 s on two cores."""
MACHINE_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    derandomize=CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # One discrepancy at a time: shrinking several at once takes minutes.
    report_multiple_bugs=False,
)
if CI:
    MACHINE_SETTINGS = settings(MACHINE_SETTINGS, database=None)

_prefixes = itertools.count()


@dataclass
class Counters:
    examples: int = 0
    steps: int = 0
    events: int = 0


COUNTERS = Counters()


def by_identity(changes: list[Change]) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = {}
    for change in changes:
        grouped.setdefault(change.identity, []).append(change)
    return grouped


class Harness:
    """A RedisStore (fresh key prefix, manual clock) and the model, fed the same steps.

    Owns its event loop; ``close`` must be called."""

    def __init__(self, redis_url: str, *, grace: float = GRACE, ttl: float = TTL) -> None:
        self.runner = asyncio.Runner()
        self.prefix = f"model{os.getpid()}-{next(_prefixes)}"
        self.clock = manual_clock()
        self.client: Redis = Redis.from_url(redis_url, decode_responses=True)
        self.store = make_store(self.client, self.clock, grace=grace, ttl=ttl, prefix=self.prefix)
        self.model = Model(SERVICE_SID, round(grace * 1000), round(ttl * 1000))
        # redis-py's PubSub.aclose is not typed: held as Any, as tests/support.py does.
        self.pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
        self.run(self._subscribe())
        self.feed = self.run(self.store.read_feed(SERVICE_SID, None, limit=1)).cursor
        self.step_changes: list[Change] = []
        self.markers = 0
        self.closed = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    async def _subscribe(self) -> None:
        await self.pubsub.subscribe(f"{self.prefix}:changes")
        await self.pubsub.psubscribe(f"{self.prefix}:changes:*")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        async def close() -> None:
            await self.pubsub.aclose()
            keys = [key async for key in self.client.scan_iter(f"{self.prefix}:*", count=1000)]
            if keys:
                await self.client.delete(*keys)
            await self.client.aclose()

        try:
            self.run(close())
        finally:
            self.runner.close()

    # -- steps -----------------------------------------------------------------------------

    def deliver(self, event: Event) -> EventResult:
        """Sends one event to both; the outcome and the changes must agree."""
        COUNTERS.events += 1
        params = reachability(
            event.identity, event.endpoint, event.event_id, event.online, connected=event.connected
        )
        parsed = parse_event(params.items())
        assert isinstance(parsed, ReachabilityEvent)
        actual = self.run(self.store.apply_reachability(parsed))
        expected = self.model.deliver(event, self.clock.now_ms)
        assert actual == expected, f"after {event}"
        self.step_changes += actual.changes
        return expected

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def sweep(self) -> None:
        """The sweeper until nothing is due; per identity, changes in the model's order."""
        changes: list[Change] = []
        expired = 0
        while True:
            result = self.run(self.store.sweep(1024))
            changes += result.changes
            expired += result.endpoints_expired
            if not result.more:
                break
        wanted, wanted_expired = self.model.sweep(self.clock.now_ms)
        # Across identities the order is the store's (by bucket); per identity it is exact.
        assert by_identity(changes) == by_identity(wanted)
        assert expired == wanted_expired
        self.step_changes += changes

    # -- checks ----------------------------------------------------------------------------

    def check(self) -> None:
        """Queries agree with the model, and pub/sub carried exactly the changes returned."""
        self.model.check_rules()
        self.run(self._check())

    async def _check(self) -> None:
        names = sorted(set(IDENTITIES) | set(self.model.identities))
        states = await self.store.lookup(SERVICE_SID, names)
        for name, state in zip(names, states, strict=True):
            s = self.model.get(name)
            assert (
                state.online,
                state.pending_offline,
                state.endpoints,
                state.version,
                state.last_event_id,
                state.changed_at_ms,
            ) == (
                s.published_online,
                s.pending_offline,
                tuple(sorted(s.connected)),
                s.version,
                s.top,
                s.changed_at,
            ), name
        await self._check_indices(full=False)
        await self._check_published()

    async def _check_indices(self, *, full: bool) -> None:
        """Every identity's stored state, the counters and the due pages against the model.

        ``stats()`` and ``online()`` read all 128 buckets (about 25 ms together), too slow for
        every step of thousands: every step reads the stored state of the model's identities
        and the counters of their buckets (the key prefix is fresh, so every other bucket is
        empty), and the two real queries run at the end of every example (``full``)."""
        wanted_stats, wanted_online = self.model.stats(), self.model.online_identities()
        keys = self.store.keys
        names = sorted(set(IDENTITIES) | set(self.model.identities))
        places = [keys.place_of(SERVICE_SID, name) for name in names]
        buckets = sorted({bucket for bucket, _ in places})
        async with self.client.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hmget(keys.counters(bucket, SERVICE_SID), "online", "pending", "endpoints")
            for bucket, page in places:
                pipe.zscore(keys.due_pages(bucket), page_member(SERVICE_SID, page))
            replies: list[Any] = await pipe.execute()
        rows, scores = replies[: len(buckets)], replies[len(buckets) :]
        counted = tuple(sum(int(row[i] or 0) for row in rows) for i in range(3))
        assert counted == wanted_stats
        stored = [await self.store.inspect(SERVICE_SID, name) for name in names]
        for name, found, score in zip(names, stored, scores, strict=True):
            wanted = self.model.get(name)
            assert found.state == wanted, name
            # When the sweeper must visit it, as the model schedules it; its page is due no
            # later (an event may have moved a deadline later: the sweeper's visit then only
            # reschedules the page).
            due = rules.due_at(wanted, self.model.ttl)
            assert (found.due or None) == (None if wanted.compacted else due), name
            if due is not None and not wanted.compacted:
                assert score is not None, name
                assert int(score) <= due, name
        if full:
            stats = await self.store.stats(SERVICE_SID)
            assert (stats.online, stats.pending_offline, stats.endpoints) == wanted_stats
            listing = await self.store.online(SERVICE_SID, 100, None)
            assert sorted(listing.identities) == wanted_online
            assert listing.next_cursor is None

    def final_check(self) -> None:
        """At the end of an example: the real stats() and online() queries too."""
        self.run(self._check_indices(full=True))

    async def _check_published(self) -> None:
        self.markers += 1
        marker = json.dumps({"test_marker": self.markers})
        await self.client.publish(f"{self.prefix}:changes", marker)
        everything: list[Change] = []
        per_identity: list[Change] = []
        deadline = time.monotonic() + 5.0
        while True:
            # None also stands for a (subscribe) message ignored: only the deadline counts.
            message = await self.pubsub.get_message(timeout=1.0)
            assert time.monotonic() < deadline, "the marker never came back"
            if message is None:
                continue
            if message["data"] == marker:
                break
            change = Change.from_message(message["data"])
            if message["type"] == "pmessage":
                channel = f"{self.prefix}:changes:{change.service_sid}:{change.identity}"
                assert message["channel"] == channel
                per_identity.append(change)
            else:
                everything.append(change)
        assert everything == self.step_changes
        assert per_identity == self.step_changes
        await self._check_feed()
        self.step_changes = []

    async def _check_feed(self) -> None:
        """The change feed holds exactly what was published, once, each identity's changes
        in order (a change of this very millisecond is readable in the next: poll)."""
        kept: list[Change] = []
        deadline = time.monotonic() + 5.0
        while True:
            read = await self.store.read_feed(SERVICE_SID, self.feed, limit=1000)
            assert read.reset is None
            kept += [Change.from_message(entry.message) for entry in read.entries]
            self.feed = read.cursor
            if len(kept) >= len(self.step_changes) and not read.more:
                break
            assert time.monotonic() < deadline, "the feed never caught up"
            await asyncio.sleep(0.001)
        assert by_identity(kept) == by_identity(self.step_changes)


class PresenceMachine(RuleBasedStateMachine):
    """Random histories of three identities, sent to the store and to the model."""

    redis_url = ""
    grace: float = GRACE
    ttl: float = TTL

    def __init__(self) -> None:
        super().__init__()
        COUNTERS.examples += 1
        self.harness = Harness(self.redis_url, grace=self.grace, ttl=self.ttl)
        self.next_event_id = 1
        self.history: list[Event] = []
        self.truth: dict[str, set[str]] = {name: set() for name in IDENTITIES}
        """What Twilio knows is connected, whether or not its events reach us."""
        self.burst_done = False

    @initialize(base=st.sampled_from([1, 1_000_000, MAX_SAFE_INTEGER - 100_000]))
    def first_event_id(self, base: int) -> None:
        """EventIds start small, or near 2^53 (Lua numbers are doubles: exact only so far)."""
        self.next_event_id = base

    def teardown(self) -> None:
        try:
            self.harness.final_check()
        finally:
            self.harness.close()

    def fresh_event(self, identity: str, endpoint: str, connected: bool, consistent: bool) -> Event:
        truth = self.truth[identity]
        if connected:
            truth.add(endpoint)
        else:
            truth.discard(endpoint)
        online = bool(truth) if consistent else not truth
        event = Event(identity, endpoint, self.next_event_id, online, connected)
        self.next_event_id += 1
        self.history.append(event)
        return event

    @rule(
        identity=st.sampled_from(IDENTITIES),
        endpoint=st.sampled_from(ENDPOINTS),
        connected=st.booleans(),
        consistent=st.sampled_from([True, True, True, False]),
        delivered=st.sampled_from([True, True, True, True, False]),
    )
    def new_event(
        self, identity: str, endpoint: str, connected: bool, consistent: bool, delivered: bool
    ) -> None:
        """A connect or disconnect with a fresh EventId; sometimes lost on the way."""
        event = self.fresh_event(identity, endpoint, connected, consistent)
        if delivered:
            self.harness.deliver(event)

    @precondition(lambda self: bool(self.history))
    @rule(back=st.integers(min_value=0, max_value=300))
    def redeliver(self, back: int) -> None:
        """A past event again: the last one (an exact repeat) or an older one (reordering,
        or a lost event arriving late)."""
        self.harness.deliver(self.history[-1 - back % len(self.history)])

    @rule(
        seconds=st.sampled_from(
            [0.001, 1, 3, GRACE - 0.001, GRACE, GRACE + 0.001, TTL - GRACE, TTL, TTL + 1, 3 * TTL]
        )
    )
    def time_passes(self, seconds: float) -> None:
        self.harness.later(seconds)

    @precondition(lambda self: self.harness.model.anything_due(self.harness.clock.now_ms))
    @rule()
    def sweep(self) -> None:
        """The sweeper comes by when it has something to do (the due set is compared with the
        model after every step, so an early visit would find what the model finds: nothing)."""
        self.harness.sweep()

    @precondition(lambda self: not self.burst_done)
    @rule(identity=st.sampled_from(IDENTITIES))
    def many_endpoints(self, identity: str) -> None:
        """More disconnected endpoints than tombstones are kept (with IsIdentityOnline=true,
        which keeps them all): the oldest are forgotten and raise the floor."""
        self.burst_done = True
        for n in range(rules.MAX_TOMBSTONES + 3):
            event = Event(identity, f"T{n}", self.next_event_id, True, False)
            self.next_event_id += 1
            self.history.append(event)
            self.harness.deliver(event)

    @invariant()
    def agrees(self) -> None:
        COUNTERS.steps += 1
        self.harness.check()


class NoGraceNoExpiryMachine(PresenceMachine):
    """The same with PRESENCE_OFFLINE_GRACE_SECONDS=0 (offline at once) and TTL 0 (never)."""

    grace = 0
    ttl = 0


# About 30 s when it passes; a discrepancy found is shrunk to its minimal history, which can
# take Hypothesis a few minutes (it gives up shrinking after 5): room for that, not 120 s.
@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("machine", "examples"),
    [
        pytest.param(PresenceMachine, MAX_EXAMPLES, id="grace-10s-ttl-60s"),
        pytest.param(NoGraceNoExpiryMachine, MAX_EXAMPLES // 4, id="grace-0-ttl-never"),
    ],
)
def test_the_store_behaves_as_the_model(
    redis_server: RedisServer, machine: type[PresenceMachine], examples: int
) -> None:
    machine.redis_url = redis_server.url
    before = Counters(**vars(COUNTERS))
    run_state_machine_as_test(machine, settings=settings(MACHINE_SETTINGS, max_examples=examples))
    examples = COUNTERS.examples - before.examples
    steps = COUNTERS.steps - before.steps
    events = COUNTERS.events - before.events
    print(f"state machine: {examples} examples, {steps} checked steps, {events} events")
    assert examples > 0


# -- pinned histories ----------------------------------------------------------------------


@pytest.fixture
def harness(redis_server: RedisServer) -> Iterator[Harness]:
    h = Harness(redis_server.url)
    yield h
    try:
        h.final_check()
    finally:
        h.close()


def ev(n: int, endpoint: str, online: bool, connected: bool, identity: str = "alice") -> Event:
    return Event(identity, endpoint, n, online, connected)


def test_pinned_expiry_then_a_connect_publishes_expired_then_connected(harness: Harness) -> None:
    harness.deliver(ev(1, "E1", True, True))
    harness.later(TTL)
    result = harness.deliver(ev(2, "E2", True, True))
    assert [(c.online, c.reason, c.version) for c in result.changes] == [
        (False, "expired", 2),
        (True, "connected", 3),
    ]
    harness.check()


def test_pinned_repeat_of_the_last_offline_event_is_a_duplicate(harness: Harness) -> None:
    harness.deliver(ev(1, "E1", True, True))
    harness.deliver(ev(2, "E1", False, False))
    assert harness.deliver(ev(2, "E1", False, False)).outcome is Outcome.DUPLICATE
    # An older offline event of another endpoint is below the floor: stale, not duplicate.
    harness.deliver(ev(3, "E2", False, True))
    assert harness.deliver(ev(2, "E1", False, False)).outcome is Outcome.STALE
    harness.check()


def test_pinned_forgotten_tombstones_raise_the_floor(harness: Harness) -> None:
    for n in range(1, rules.MAX_TOMBSTONES + 3):
        harness.deliver(ev(n, f"T{n}", True, False))
    # T1 and T2 were forgotten (over the cap): their late connects, and a never-seen endpoint's
    # event as old, are stale; T3 is still remembered.
    assert harness.deliver(ev(1, "T1", True, True)).outcome is Outcome.STALE
    assert harness.deliver(ev(2, "X", True, True)).outcome is Outcome.STALE
    assert harness.deliver(ev(3, "T3", True, True)).outcome is Outcome.DUPLICATE
    harness.check()


def test_pinned_lost_connect_kept_online_by_twilios_word_until_the_ttl(harness: Harness) -> None:
    harness.deliver(ev(2, "E2", True, False))  # E1's connect (1) was lost
    assert harness.model.get("alice").published_online
    harness.later(TTL)
    harness.sweep()
    state = harness.model.get("alice")
    assert not state.published_online
    assert state.version == 2
    # The lost connect arriving now is below the floor the expiry raised.
    assert harness.deliver(ev(1, "E1", True, True)).outcome is Outcome.STALE
    harness.check()


def test_pinned_a_deadline_passed_is_honoured_by_the_next_event_first(harness: Harness) -> None:
    harness.deliver(ev(1, "E1", True, True))
    harness.deliver(ev(2, "E1", False, False))
    harness.later(GRACE)
    result = harness.deliver(ev(3, "E2", True, True))
    assert [(c.online, c.reason, c.event_id) for c in result.changes] == [
        (False, "disconnected", 2),
        (True, "connected", 3),
    ]
    harness.check()


def test_pinned_a_deadline_fires_at_its_very_millisecond(harness: Harness) -> None:
    """Found by the machine when the model (wrongly) fired a deadline only after it had
    passed: an IsIdentityOnline=true disconnect keeps alice online by Twilio's word, a
    connect saying false then drops everything, and the sweep exactly at the deadline fires."""
    for n in range(1, rules.MAX_TOMBSTONES + 4):
        harness.deliver(ev(n, f"T{n}", True, False))
    harness.deliver(ev(rules.MAX_TOMBSTONES + 4, "E1", False, True))
    assert harness.model.get("alice").pending_offline
    harness.later(GRACE)
    harness.sweep()
    state = harness.model.get("alice")
    assert (state.published_online, state.version) == (False, 2)
    harness.check()


def test_pinned_event_ids_near_two_to_the_53(harness: Harness) -> None:
    top = MAX_SAFE_INTEGER
    harness.deliver(ev(top - 2, "E1", True, True))
    harness.deliver(ev(top, "E1", False, False))
    assert harness.deliver(ev(top - 1, "E2", True, True)).outcome is Outcome.STALE
    harness.later(GRACE)
    harness.sweep()
    assert harness.model.get("alice").changed_at is not None
    harness.check()


def test_pinned_older_events_do_not_refresh_twilios_word(harness: Harness) -> None:
    """The online evidence of the highest event ages from when that event came: a late,
    older event (here a disconnect of another endpoint, also saying online) does not make
    it younger. (The machine missed a model that refreshed it: pinned by hand.)"""
    harness.deliver(ev(10, "E1", True, False))  # E1's connect was lost: online by evidence
    harness.later(TTL - GRACE)
    assert harness.deliver(ev(9, "E2", True, False)).outcome is Outcome.APPLIED
    harness.later(GRACE)
    harness.sweep()
    state = harness.model.get("alice")
    assert (state.published_online, state.version) == (False, 2)
    harness.check()


def test_pinned_a_settled_identity_is_compacted_and_comes_back(harness: Harness) -> None:
    """Offline and silent for the TTL, an identity keeps only its version, last change and
    highest EventId, in its page's graveyard; its next event brings the rest back."""
    harness.deliver(ev(1, "E1", True, True))
    harness.deliver(ev(2, "E1", False, False))
    harness.later(GRACE)
    harness.sweep()
    harness.later(TTL)
    harness.sweep()
    stored = harness.run(harness.store.inspect(SERVICE_SID, "alice"))
    assert (stored.where, stored.state.version, stored.state.forgotten_floor) == ("graveyard", 2, 2)
    # Every event at or below the floor is stale now, even the repeat of the last one.
    assert harness.deliver(ev(2, "E1", False, False)).outcome is Outcome.STALE
    assert harness.deliver(ev(1, "E1", True, True)).outcome is Outcome.STALE
    result = harness.deliver(ev(3, "E2", True, True))
    assert [(c.online, c.version) for c in result.changes] == [(True, 3)]
    stored = harness.run(harness.store.inspect(SERVICE_SID, "alice"))
    assert (stored.where, stored.state.compacted) == ("page", False)
    harness.check()


def test_pinned_many_compacted_identities_share_a_graveyard(harness: Harness) -> None:
    """Identities of one page in its graveyard, kept in order: each is found again."""
    names = (f"user-{n}" for n in range(200_000))
    place = harness.store.keys.place_of(SERVICE_SID, "user-0")
    mates = [n for n in names if harness.store.keys.place_of(SERVICE_SID, n) == place][:5]
    assert len(mates) == 5
    for n, name in enumerate(mates, start=1):
        harness.deliver(ev(n, "E1", False, False, identity=name))
    harness.later(TTL)
    harness.sweep()
    for n, name in enumerate(mates, start=1):
        stored = harness.run(harness.store.inspect(SERVICE_SID, name))
        assert (stored.where, stored.state.forgotten_floor) == ("graveyard", n), name
    for n, name in enumerate(reversed(mates), start=100):
        assert harness.deliver(ev(n, "E1", True, True, identity=name)).changes
    harness.check()


def test_a_change_read_from_its_message_is_the_change() -> None:
    change = Change("IS" + "0" * 32, "élodie", True, "connected", 12, 3, "2026-12-07T12:00:00.000Z")
    message = orjson.dumps(dataclasses.asdict(change)).decode()
    read = Change.from_message(message)
    assert read == change
    assert hash(read) == hash(change)
    assert str(read) == str(change)
    assert dataclasses.asdict(read) == dataclasses.asdict(change)
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.online = False  # type: ignore[misc]
    fields = orjson.loads(message)
    with pytest.raises(TypeError, match="extra"):
        Change.from_message(orjson.dumps({**fields, "extra": 1}).decode())
    del fields["version"]
    with pytest.raises(TypeError, match="version"):
        Change.from_message(orjson.dumps(fields).decode())
