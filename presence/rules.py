"""The presence rules (docs/presence.md), stated once in plain Python.

This is the executable statement of what the Lua scripts in ``presence/store/lua/`` do
atomically in Redis: each function here has a Lua twin of the same name, in the file named
after what it decides:

======================  ===========================  =========================================
function                Lua file                     what it decides
======================  ===========================  =========================================
``classify``            ``ordering.lua``             is an event new, a repeat, or overtaken?
``apply``, ``bury``     ``endpoints.lua``            endpoints, tombstones, IsIdentityOnline
``settle``              ``flap.lua``                 online at once; offline held for the grace,
                                                     and a flap suppressed
``expire``, ``compact`` ``expiry.lua``               what no event has named for the TTL, and
                                                     what is left of a settled identity
``fire_deadline``       ``deadline.lua``             the offline published at the deadline
``advance``             ``deadline.lua``             both, as time passes
``publish``             ``publish.lua``              a change and its version
======================  ===========================  =========================================

``Model`` runs them for every identity of one service: the simulator predicts its replies
with it, and the tests compare the real store with it step by step (``tests/test_model.py``).
Times are milliseconds. Nothing here is clever on purpose: each function is one rule.

The readings of the points the rules leave open (docs/presence.md):

* an ``IsIdentityOnline=false`` event drops every endpoint and tombstone with an EventId up to
  its own (its own endpoint too, even on an ``endpoint_connected``) and becomes a floor: no
  event at or below it applies any more;
* a disconnected endpoint leaves a tombstone, at most ``MAX_TOMBSTONES`` per identity, kept
  for the endpoint TTL; a forgotten tombstone (the lowest EventId when over the cap, or one
  older than the TTL), an expired endpoint and expired online evidence raise the *forgotten
  floor*: events of endpoints no longer remembered are stale up to it;
* online evidence: the identity's highest EventId says whether Twilio considers it online;
  ``true`` keeps it online even without any endpoint seen, until that evidence is TTL old;
* going online is published at once; going offline is held for the grace and published at
  the deadline (reason ``disconnected``, event_id of the event that started the wait) unless
  the identity is back in time; expiry publishes offline at once (reason ``expired``, no
  event_id) unless a grace deadline is already running;
* an identity left with nothing but its history (offline, nothing pending, no endpoint or
  tombstone remembered, no online evidence) for the TTL after its last event is compacted: it
  keeps its version, the time of its last change and its highest EventId, which becomes the
  forgotten floor (so an exact repeat of its last event is now stale, not a duplicate);
* time is applied lazily: what became due is applied before each event of the identity, and
  by the sweeper, which visits every identity with something due.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from presence.model import Change, EventResult, Outcome
from presence.timestamps import iso_from_ms

MAX_TOMBSTONES = 64
"""Disconnected endpoints remembered per identity; beyond, the oldest is forgotten."""


@dataclass(frozen=True)
class Event:
    """One endpoint_connected / endpoint_disconnected webhook."""

    identity: str
    endpoint: str
    event_id: int
    online: bool
    """IsIdentityOnline."""
    connected: bool


class Published(list[Change]):
    """The changes an operation publishes, in order, for one service (publish.lua writes
    each as a message with the service's SID)."""

    def __init__(self, service_sid: str) -> None:
        super().__init__()
        self.service_sid = service_sid


@dataclass
class Mark:
    """What is remembered of an endpoint: the last EventId that named it, and when."""

    event_id: int
    at_ms: int


@dataclass
class Identity:
    """One identity's presence state: the same fields, by the same names, as the Lua
    scripts' state table (``state.lua``)."""

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
    """Rules 2 and 4: that event said IsIdentityOnline=true and the evidence has not expired."""
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
    compacted: bool = False
    """Only its history is kept (``compact``), until its next applied event."""

    @property
    def pending_offline(self) -> bool:
        return self.published_online and self.deadline is not None


def live(s: Identity) -> bool:
    """Online by the rules: an endpoint connected, or Twilio's word that it is online."""
    return bool(s.connected) or s.top_online


def settled(s: Identity) -> bool:
    """Nothing left but its history: offline, nothing pending, no endpoint or tombstone
    remembered, no online evidence."""
    return (
        not s.published_online
        and s.deadline is None
        and not s.connected
        and not s.tombstones
        and not s.top_online
    )


def due_at(s: Identity, ttl: int) -> int | None:
    """When the sweeper next has something to do for this identity."""
    times = [] if s.deadline is None else [s.deadline]
    if ttl > 0:
        times += [mark.at_ms + ttl for mark in s.connected.values()]
        times += [mark.at_ms + ttl for mark in s.tombstones.values()]
        if s.top_online:
            times.append(s.top_at + ttl)
        if s.top is not None and not s.compacted and settled(s):
            times.append(s.top_at + ttl)
    return min(times, default=None)


# -- publish.lua -------------------------------------------------------------------------


def publish(
    s: Identity, online: bool, reason: str, event_id: int | None, now: int, out: Published
) -> None:
    """Rule 5: every change gets the next version; it ends any pending offline."""
    assert online != s.published_online, "a change always flips online"
    s.version += 1
    s.published_online = online
    s.changed_at = now
    s.deadline = None
    s.deadline_event = None
    out.append(
        Change(out.service_sid, s.name, online, reason, event_id, s.version, iso_from_ms(now))
    )


# -- endpoints.lua -----------------------------------------------------------------------


def raise_forgotten_floor(s: Identity, event_id: int) -> None:
    if s.forgotten_floor is None or event_id > s.forgotten_floor:
        s.forgotten_floor = event_id


def forget(s: Identity, marks: dict[str, Mark], endpoint: str) -> None:
    """An endpoint no longer remembered: its EventId becomes part of the forgotten floor."""
    raise_forgotten_floor(s, marks.pop(endpoint).event_id)


def bury(s: Identity, endpoint: str, event_id: int, now: int) -> None:
    """A disconnected endpoint becomes a tombstone; over the cap, the one with the lowest
    EventId is forgotten."""
    s.tombstones[endpoint] = Mark(event_id, now)
    if len(s.tombstones) > MAX_TOMBSTONES:
        oldest = min(s.tombstones, key=lambda name: s.tombstones[name].event_id)
        forget(s, s.tombstones, oldest)


def apply(s: Identity, event: Event, now: int) -> None:
    """Rules 1 and 2: the state change of an applied event."""
    if event.connected:
        s.tombstones.pop(event.endpoint, None)
        s.connected[event.endpoint] = Mark(event.event_id, now)
    else:
        s.connected.pop(event.endpoint, None)
        bury(s, event.endpoint, event.event_id, now)
    if not event.online:
        # Nothing at or below this EventId is connected any more, and the floor keeps every
        # older event from bringing an endpoint back.
        s.off_floor = event.event_id
        s.off_endpoint = event.endpoint
        for marks in (s.connected, s.tombstones):
            for endpoint in [e for e, m in marks.items() if m.event_id <= event.event_id]:
                del marks[endpoint]
    if s.top is None or event.event_id > s.top:
        s.top = event.event_id
        s.top_online = event.online
        s.top_at = now
    s.compacted = False


# -- ordering.lua ------------------------------------------------------------------------


def classify(s: Identity, event: Event) -> Outcome:
    """Rules 1 and 2: is the event new, a repeat, or superseded?

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


# -- expiry.lua --------------------------------------------------------------------------


def _older(marks: dict[str, Mark], limit: int) -> list[str]:
    return sorted(endpoint for endpoint, mark in marks.items() if mark.at_ms <= limit)


def expire(s: Identity, now: int, ttl: int) -> tuple[int, bool]:
    """Rule 4: an endpoint, a tombstone or the online evidence not refreshed for the TTL is
    forgotten (raising the forgotten floor). Returns how many connected endpoints expired,
    and whether anything that kept the identity online did."""
    if ttl <= 0:
        return 0, False
    limit = now - ttl
    endpoints = 0
    for endpoint in _older(s.connected, limit):
        forget(s, s.connected, endpoint)
        endpoints += 1
    for endpoint in _older(s.tombstones, limit):
        forget(s, s.tombstones, endpoint)
    evidence = s.top_online and s.top_at <= limit
    if evidence:
        s.top_online = False
        assert s.top is not None
        raise_forgotten_floor(s, s.top)
    return endpoints, endpoints > 0 or evidence


# -- deadline.lua ------------------------------------------------------------------------


def fire_deadline(s: Identity, now: int, expired: bool, out: Published) -> None:
    """Rules 3 and 4: a passed deadline publishes offline (``disconnected``) if the identity
    is still not live; otherwise, if expiry alone left a published-online identity with
    nothing, offline is published at once (``expired``)."""
    if s.deadline is not None and s.deadline <= now and not live(s):
        publish(s, False, "disconnected", s.deadline_event, now, out)
    elif expired and s.deadline is None and s.published_online and not live(s):
        publish(s, False, "expired", None, now, out)


def compact(s: Identity, now: int, ttl: int) -> None:
    """Rule 4, at the end: settled for the TTL since its last event, an identity keeps only
    its version, the time of its last change and its highest EventId, which becomes the
    forgotten floor: every event at or below it is stale, as it already was (but for an exact
    repeat of its last event, once a duplicate). This is what an offline identity costs."""
    if ttl <= 0 or s.top is None or s.compacted or not settled(s) or s.top_at + ttl > now:
        return
    s.off_floor = None
    s.off_endpoint = None
    s.forgotten_floor = s.top
    s.top_at = 0
    s.compacted = True


def advance(s: Identity, now: int, ttl: int, out: Published) -> int:
    """What the passage of time made due; returns how many connected endpoints expired."""
    endpoints, expired = expire(s, now, ttl)
    fire_deadline(s, now, expired, out)
    compact(s, now, ttl)
    return endpoints


# -- flap.lua ----------------------------------------------------------------------------


def settle(s: Identity, event_id: int, now: int, grace: int, out: Published) -> bool:
    """Rule 3 after an applied event: going online is published at once; going offline waits
    for the grace deadline, and coming back before it (the hourly rebalancing flap) cancels
    the deadline without a word. Returns True when a flap was suppressed so."""
    if live(s):
        if not s.published_online:
            publish(s, True, "connected", event_id, now, out)
        elif s.deadline is not None:
            s.deadline = None
            s.deadline_event = None
            return True
    elif s.published_online and s.deadline is None:
        if grace == 0:
            publish(s, False, "disconnected", event_id, now, out)
        else:
            s.deadline = now + grace
            s.deadline_event = event_id
    return False


# -- the operations (apply_event.lua, fire_due.lua) --------------------------------------


class Model:
    """Every identity of one service, with the store's grace and TTL (ms; TTL 0: never)."""

    def __init__(self, service_sid: str, grace_ms: int, ttl_ms: int) -> None:
        self.service_sid = service_sid
        self.grace = grace_ms
        self.ttl = ttl_ms
        self.identities: dict[str, Identity] = {}

    def get(self, name: str) -> Identity:
        if name not in self.identities:
            self.identities[name] = Identity(name)
        return self.identities[name]

    def deliver(self, event: Event, now: int) -> EventResult:
        """One webhook (``apply_event.lua``): first what time made due, then the event if it
        is new; what the store answers for it."""
        s = self.get(event.identity)
        out = Published(self.service_sid)
        expired = advance(s, now, self.ttl, out)
        outcome = classify(s, event)
        flap = False
        if outcome is Outcome.APPLIED:
            apply(s, event, now)
            flap = settle(s, event.event_id, now, self.grace, out)
        return EventResult(outcome, tuple(out), flap, expired)

    def anything_due(self, now: int) -> bool:
        return any(
            due is not None and due <= now
            for due in (due_at(s, self.ttl) for s in self.identities.values())
        )

    def sweep(self, now: int) -> tuple[list[Change], int]:
        """The sweeper's visits (``fire_due.lua``): every identity with something due."""
        out = Published(self.service_sid)
        expired = 0
        for name in sorted(self.identities):
            s = self.identities[name]
            due = due_at(s, self.ttl)
            if due is not None and due <= now:
                expired += advance(s, now, self.ttl, out)
        return out, expired

    # -- what the queries answer -----------------------------------------------------------

    def online_identities(self) -> list[str]:
        return sorted(name for name, s in self.identities.items() if s.published_online)

    def stats(self) -> tuple[int, int, int]:
        """(online, pending_offline, endpoints), as the store counts them."""
        states = self.identities.values()
        return (
            sum(s.published_online for s in states),
            sum(s.deadline is not None for s in states),
            sum(len(s.connected) for s in states),
        )

    def check_rules(self) -> None:
        """The state's consistency with the rules, between any two steps."""
        for s in self.identities.values():
            # Rule 3: online is published at once; offline only after the grace.
            assert not live(s) or (s.published_online and s.deadline is None), s
            assert s.deadline is None or (s.published_online and not live(s)), s
            if self.grace == 0:
                assert s.published_online == live(s), s
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
