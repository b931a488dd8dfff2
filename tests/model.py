"""A reference model of the presence rules (CONTRACT section 4), in plain Python, no Redis.

It follows the readings of the ambiguous points that README "How presence is decided"
documents, so that it can be compared, step by step, with the real store:

* an ``IsIdentityOnline=false`` event drops every endpoint and tombstone with an EventId up to
  its own (its own endpoint too, even on an ``endpoint_connected``) and becomes a floor: no
  event at or below it applies any more;
* a disconnected endpoint leaves a tombstone, at most ``MAX_TOMBSTONES`` per identity, kept for
  the endpoint TTL; a forgotten tombstone (the lowest EventId when over the cap, or one older
  than the TTL), an expired endpoint and expired online evidence raise the *forgotten floor*:
  events of endpoints no longer remembered are stale up to it;
* online evidence: the identity's highest EventId says whether Twilio considers it online;
  ``true`` keeps it online even without any endpoint seen, until that evidence is TTL old;
* going online is published at once; going offline is held for the grace and published at the
  deadline (reason ``disconnected``, event_id of the event that started the wait) unless the
  identity is back in time; expiry publishes offline at once (reason ``expired``, no event_id)
  unless a grace deadline is already running;
* time is applied lazily: what became due is applied before each event of the identity, and by
  the sweeper, which visits every identity with something due.

Times are milliseconds. Nothing here is clever on purpose: each method is one rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MAX_TOMBSTONES = 64
"""Tombstones kept per identity (README: "up to 64 per identity")."""


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True)
class Event:
    """One endpoint_connected / endpoint_disconnected webhook."""

    identity: str
    endpoint: str
    event_id: int
    online: bool
    """IsIdentityOnline."""
    connected: bool


@dataclass(frozen=True)
class Change:
    """One published presence change (CONTRACT section 5), without the service SID."""

    identity: str
    online: bool
    reason: str
    event_id: int | None
    version: int
    at_ms: int


@dataclass
class Mark:
    """What is remembered of an endpoint: the last EventId that named it, and when."""

    event_id: int
    at_ms: int


@dataclass
class Result:
    outcome: Outcome
    changes: list[Change]
    flap_suppressed: bool = False
    endpoints_expired: int = 0


@dataclass
class Identity:
    """One identity's presence state."""

    name: str
    connected: dict[str, Mark] = field(default_factory=dict)
    """Rule 1: the connected endpoints."""
    tombstones: dict[str, Mark] = field(default_factory=dict)
    """Rule 1: disconnected endpoints, remembered so that a late connect cannot revive them."""
    forgotten_floor: int | None = None
    """Events of endpoints not remembered are stale at or below this EventId."""
    off_floor: int | None = None
    """Rule 2: EventId of the last applied IsIdentityOnline=false ..."""
    off_endpoint: str | None = None
    """... and its endpoint (an exact repeat of that event is a duplicate, not stale)."""
    top: int | None = None
    """Highest EventId applied (``last_event_id``)."""
    top_online: bool = False
    """Rule 2/4: that event said IsIdentityOnline=true and the evidence has not expired."""
    top_at: int = 0
    """When the highest event was applied (for the expiry of its online evidence)."""
    published_online: bool = False
    """What subscribers were last told (and what queries answer as ``online``)."""
    version: int = 0
    """Rule 5: number of changes published."""
    changed_at: int | None = None
    deadline: int | None = None
    """Rule 3: the offline deadline while an offline is pending."""
    deadline_event: int | None = None
    """The EventId that started the pending offline (the event_id it is published with)."""

    # -- derived ---------------------------------------------------------------------------

    def live(self) -> bool:
        """Online by the rules: an endpoint connected, or Twilio's word that it is online."""
        return bool(self.connected) or self.top_online

    @property
    def pending_offline(self) -> bool:
        return self.published_online and self.deadline is not None

    def due_at(self, ttl: int) -> int | None:
        """When the sweeper next has something to do for this identity."""
        times = [] if self.deadline is None else [self.deadline]
        if ttl > 0:
            times += [mark.at_ms + ttl for mark in self.connected.values()]
            times += [mark.at_ms + ttl for mark in self.tombstones.values()]
            if self.top_online:
                times.append(self.top_at + ttl)
        return min(times, default=None)

    # -- floors ----------------------------------------------------------------------------

    def raise_forgotten_floor(self, event_id: int) -> None:
        if self.forgotten_floor is None or event_id > self.forgotten_floor:
            self.forgotten_floor = event_id

    def forget_connected(self, endpoint: str) -> None:
        self.raise_forgotten_floor(self.connected.pop(endpoint).event_id)

    def forget_tombstone(self, endpoint: str) -> None:
        self.raise_forgotten_floor(self.tombstones.pop(endpoint).event_id)


class Model:
    """Every identity of one service, with the store's grace and TTL (ms; TTL 0: never)."""

    def __init__(self, grace_ms: int, ttl_ms: int) -> None:
        self.grace = grace_ms
        self.ttl = ttl_ms
        self.identities: dict[str, Identity] = {}

    def get(self, name: str) -> Identity:
        if name not in self.identities:
            self.identities[name] = Identity(name)
        return self.identities[name]

    # -- publishing ------------------------------------------------------------------------

    @staticmethod
    def publish(
        s: Identity, online: bool, reason: str, event_id: int | None, now: int, out: list[Change]
    ) -> None:
        """Rule 5: every change gets the next version; it ends any pending offline."""
        assert online != s.published_online, "a change always flips online"
        s.version += 1
        s.published_online = online
        s.changed_at = now
        s.deadline = None
        s.deadline_event = None
        out.append(Change(s.name, online, reason, event_id, s.version, now))

    # -- time ------------------------------------------------------------------------------

    def advance(self, s: Identity, now: int, out: list[Change]) -> int:
        """Rules 3 and 4 as time passes; returns how many connected endpoints expired.

        Expiry (rule 4): an endpoint, a tombstone or the online evidence not refreshed for the
        TTL is forgotten (raising the forgotten floor). Then a passed deadline publishes offline
        (``disconnected``) if the identity is still not live; otherwise, if expiry alone left a
        published-online identity with nothing, offline is published at once (``expired``).
        """
        expired_endpoints = 0
        something_expired = False
        if self.ttl > 0:
            limit = now - self.ttl
            for endpoint in sorted(self.endpoints_older(s.connected, limit)):
                s.forget_connected(endpoint)
                expired_endpoints += 1
                something_expired = True
            for endpoint in sorted(self.endpoints_older(s.tombstones, limit)):
                s.forget_tombstone(endpoint)
            if s.top_online and s.top_at <= limit:
                s.top_online = False
                assert s.top is not None
                s.raise_forgotten_floor(s.top)
                something_expired = True
        if s.deadline is not None and s.deadline <= now and not s.live():
            self.publish(s, False, "disconnected", s.deadline_event, now, out)
        elif something_expired and s.deadline is None and s.published_online and not s.live():
            self.publish(s, False, "expired", None, now, out)
        return expired_endpoints

    @staticmethod
    def endpoints_older(marks: dict[str, Mark], limit: int) -> list[str]:
        return [endpoint for endpoint, mark in marks.items() if mark.at_ms <= limit]

    # -- events ----------------------------------------------------------------------------

    @staticmethod
    def classify(s: Identity, event: Event) -> Outcome:
        """Rule 1 and 2: is the event new, a repeat, or superseded?

        * the endpoint is remembered (connected or tombstone): same EventId is a duplicate,
          a lower one is stale;
        * otherwise, or if higher: at or below the last IsIdentityOnline=false it is stale
          (the very same event again is a duplicate);
        * an endpoint not remembered at all is stale up to the forgotten floor.
        """
        known = s.connected.get(event.endpoint) or s.tombstones.get(event.endpoint)
        if known is not None:
            if known.event_id == event.event_id:
                return Outcome.DUPLICATE
            if known.event_id > event.event_id:
                return Outcome.STALE
        if s.off_floor is not None:
            if event.event_id == s.off_floor and event.endpoint == s.off_endpoint:
                return Outcome.DUPLICATE
            if event.event_id <= s.off_floor:
                return Outcome.STALE
        if known is None and s.forgotten_floor is not None and event.event_id <= s.forgotten_floor:
            return Outcome.STALE
        return Outcome.APPLIED

    @staticmethod
    def bury(s: Identity, endpoint: str, event_id: int, now: int) -> None:
        """A disconnected endpoint becomes a tombstone; over the cap, the one with the lowest
        EventId is forgotten (raising the forgotten floor)."""
        s.tombstones[endpoint] = Mark(event_id, now)
        if len(s.tombstones) > MAX_TOMBSTONES:
            oldest = min(s.tombstones, key=lambda name: s.tombstones[name].event_id)
            s.forget_tombstone(oldest)

    def apply(self, s: Identity, event: Event, now: int) -> None:
        """The state change of an applied event (rules 1 and 2)."""
        if event.connected:
            s.tombstones.pop(event.endpoint, None)
            s.connected[event.endpoint] = Mark(event.event_id, now)
        else:
            s.connected.pop(event.endpoint, None)
            self.bury(s, event.endpoint, event.event_id, now)
        if not event.online:
            s.off_floor = event.event_id
            s.off_endpoint = event.endpoint
            for marks in (s.connected, s.tombstones):
                for endpoint in [e for e, m in marks.items() if m.event_id <= event.event_id]:
                    del marks[endpoint]
        if s.top is None or event.event_id > s.top:
            s.top = event.event_id
            s.top_online = event.online
            s.top_at = now

    def settle(self, s: Identity, event_id: int, now: int, out: list[Change]) -> bool:
        """Rule 3 after an applied event; returns True when a pending offline was cancelled."""
        if s.live():
            if not s.published_online:
                self.publish(s, True, "connected", event_id, now, out)
            elif s.deadline is not None:
                s.deadline = None
                s.deadline_event = None
                return True
        elif s.published_online and s.deadline is None:
            if self.grace == 0:
                self.publish(s, False, "disconnected", event_id, now, out)
            else:
                s.deadline = now + self.grace
                s.deadline_event = event_id
        return False

    def deliver(self, event: Event, now: int) -> Result:
        """One webhook: first what time made due, then the event if it is new."""
        s = self.get(event.identity)
        out: list[Change] = []
        expired = self.advance(s, now, out)
        outcome = self.classify(s, event)
        flap = False
        if outcome is Outcome.APPLIED:
            self.apply(s, event, now)
            flap = self.settle(s, event.event_id, now, out)
        return Result(outcome, out, flap, expired)

    def anything_due(self, now: int) -> bool:
        return any(
            due is not None and due <= now
            for due in (s.due_at(self.ttl) for s in self.identities.values())
        )

    def sweep(self, now: int) -> tuple[list[Change], int]:
        """The sweeper's visits: every identity with something due at ``now``."""
        out: list[Change] = []
        expired = 0
        for name in sorted(self.identities):
            s = self.identities[name]
            due = s.due_at(self.ttl)
            if due is not None and due <= now:
                expired += self.advance(s, now, out)
        return out, expired

    # -- queries ---------------------------------------------------------------------------

    def check_rules(self) -> None:
        """The model's own consistency with CONTRACT section 4, between any two steps."""
        for s in self.identities.values():
            # Rule 3: online is published at once; offline only after the grace.
            assert not s.live() or (s.published_online and s.deadline is None), s
            assert s.deadline is None or (s.published_online and not s.live()), s
            if self.grace == 0:
                assert s.published_online == s.live(), s
            # Rule 1: an endpoint is connected or a tombstone, never both; the cap holds.
            assert not set(s.connected) & set(s.tombstones), s
            assert len(s.tombstones) <= MAX_TOMBSTONES, s
            # Rule 2: nothing at or below the last IsIdentityOnline=false is remembered, and
            # when the highest event said false, no endpoint is connected.
            if s.off_floor is not None:
                marks = [*s.connected.values(), *s.tombstones.values()]
                assert all(mark.event_id > s.off_floor for mark in marks), s
                if s.top == s.off_floor:
                    assert not s.connected, s
                    assert not s.top_online, s
            # Rule 5: the version counts the changes; odd while published online.
            assert s.published_online == (s.version % 2 == 1), s

    def online_identities(self) -> list[str]:
        return sorted(name for name, s in self.identities.items() if s.published_online)

    def stats(self) -> tuple[int, int, int]:
        """(online, pending_offline, endpoints), as ``stats()`` counts them."""
        states = self.identities.values()
        return (
            sum(s.published_online for s in states),
            sum(s.deadline is not None for s in states),
            sum(len(s.connected) for s in states),
        )
