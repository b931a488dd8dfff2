"""Traffic generation: realistic Twilio Sync webhooks, deterministic for a seed, no I/O.

``Traffic`` is an iterable of ``Webhook`` objects (parameters, headers, identity) in delivery
order. It models N identities, each with up to K endpoints connecting and disconnecting, with
per-identity increasing EventIds and an ``IsIdentityOnline`` that matches the endpoint set
after the event; rebalancing flaps (a disconnect and a reconnect, same EndpointId or a new
one); a share of document, list and map events of every type on the identity's own
collections (and REST-initiated ones by ``system``); and, on request, faults: duplicates
(an already-sent webhook again, same idempotency token), late deliveries (an event held back
until after newer ones of its identity) and lost disconnects (never sent).

It keeps two truths: what really happened (who is connected) and what a service that saw
exactly these webhooks must hold (by the presence rules themselves, ``presence.rules``, less
the passage of time, which a simulation is far too short to reach), which also gives each
webhook the outcome the service should answer. An identity's webhooks must be delivered in
the order given; those of different identities may be delivered concurrently.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from presence import rules
from presence.model import Outcome
from presence.simulate.documents import Collection, collection_params
from presence.twilio import IDEMPOTENCY_HEADER, REACHABILITY_EVENT_TYPES, SYSTEM_IDENTITY
from presence.twilio.samples import reachability

DEFAULT_IDENTITIES = 1000
DEFAULT_MAX_ENDPOINTS = 3
DEFAULT_EVENTS = 10_000
DEFAULT_FLAP_SHARE = 0.1
DEFAULT_COLLECTION_SHARE = 0.2
SYSTEM_SHARE = 0.1
"""Of the collection events, the share initiated through the REST API (Identity ``system``)."""


def derived_sid(prefix: str, seed: int, what: str) -> str:
    """A SID of this seed's own: ``prefix`` and 32 hex digits."""
    digest = hashlib.sha256(f"presence-simulate:{what}:{seed}".encode()).hexdigest()
    return prefix + digest[:32]


@dataclass(frozen=True)
class TrafficConfig:
    """What to generate. ``events`` None: without end (a run bounded by time)."""

    identities: int = DEFAULT_IDENTITIES
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS
    events: int | None = DEFAULT_EVENTS
    flap_share: float = DEFAULT_FLAP_SHARE
    collection_share: float = DEFAULT_COLLECTION_SHARE
    duplicates: float = 0.0
    reorder: float = 0.0
    lost_disconnects: float = 0.0
    seed: int = 0
    service_sid: str | None = None
    """None: one derived from the seed, so that each seed starts on a fresh service."""
    account_sid: str | None = None

    @property
    def service(self) -> str:
        return self.service_sid or derived_sid("IS", self.seed, "service")

    @property
    def account(self) -> str:
        return self.account_sid or derived_sid("AC", self.seed, "account")


@dataclass(frozen=True, slots=True)
class Webhook:
    """One webhook to deliver: form parameters, headers (the signature is added by the sender,
    which knows the URL), and the outcome the service should answer."""

    params: dict[str, str]
    headers: dict[str, str]
    identity: str
    expected: str
    fault: str | None = None
    """None, ``duplicate`` (sent before) or ``late`` (delivered after newer events)."""

    @property
    def event_type(self) -> str:
        return self.params["EventType"]


@dataclass(frozen=True)
class Expectation:
    """What the service should hold once every webhook is answered and the grace has passed."""

    online: int
    """Identities the service counts online (``GET .../stats``)."""
    truly_online: int
    """Identities really connected at the end."""
    ghosts: int
    """Online at the service only because their disconnect was lost (until the endpoint TTL)."""
    endpoints: int
    """Endpoints the service holds."""
    outcomes: dict[str, int]
    """Replies the service should give, by status."""
    faults: dict[str, int]
    """``duplicate``, ``late`` and ``lost_disconnect`` webhooks."""


@dataclass
class _Draft:
    params: dict[str, str]
    headers: dict[str, str]
    fault: str | None = None


@dataclass
class _Held:
    countdown: int
    """Fresh deliveries of its identity still to come before it."""
    draft: _Draft


@dataclass
class _Identity:
    name: str
    next_event_id: int
    endpoints: list[str] = field(default_factory=list)
    """The truth: endpoints connected now."""
    view: rules.Identity = field(default_factory=lambda: rules.Identity(""))
    """What the service holds of this identity."""
    held: list[_Held] = field(default_factory=list)
    collections: dict[str, Collection] = field(default_factory=dict)
    serial: int = 0


class Traffic:
    """The webhooks of one simulated run, in delivery order (see the module's docstring)."""

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        width = len(str(config.identities - 1))
        self._identities = [
            _Identity(f"user-{i:0{width}d}", self._rng.randrange(1, 1_000_000))
            for i in range(config.identities)
        ]
        self._system = _Identity(SYSTEM_IDENTITY, 0)
        self._out: deque[Webhook] = deque()
        self._held = 0
        self._produced = 0
        self._budget: int | None = None
        self._outcomes: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()

    def __iter__(self) -> Iterator[Webhook]:
        limit = self.config.events
        while True:
            while self._out:
                self._produced += 1
                yield self._out.popleft()
            if limit is None:
                self._budget = None
            else:
                self._budget = limit - self._produced - self._held
                if self._budget <= 0:
                    if not self._held:
                        return
                    self._release_all()
                    continue
            self._step()

    def release_held(self) -> list[Webhook]:
        """For a run cut short: every webhook generated but not yet given, held ones included."""
        self._release_all()
        rest = list(self._out)
        self._out.clear()
        self._produced += len(rest)
        return rest

    def expectation(self) -> Expectation:
        people = self._identities
        ghosts = sum(1 for p in people if rules.live(p.view) and not p.endpoints)
        return Expectation(
            online=sum(1 for p in people if rules.live(p.view)),
            truly_online=sum(1 for p in people if p.endpoints),
            ghosts=ghosts,
            endpoints=sum(len(p.view.connected) for p in people),
            outcomes=dict(sorted(self._outcomes.items())),
            faults={name: self._faults[name] for name in ("duplicate", "late", "lost_disconnect")},
        )

    def online_identities(self) -> list[str]:
        """The identities the service should count online, by name."""
        return [p.name for p in self._identities if rules.live(p.view)]

    # Generation.

    def _room(self, needed: int) -> bool:
        return self._budget is None or self._budget >= needed

    def _spend(self) -> None:
        if self._budget is not None:
            self._budget -= 1

    def _step(self) -> None:
        rng, config = self._rng, self.config
        person = rng.choice(self._identities)
        if rng.random() < config.collection_share:
            if rng.random() < SYSTEM_SHARE:
                self._collection_event(self._system)
                return
            if person.endpoints:
                self._collection_event(person)
                return
            # A client connects before it writes: this one's first event is a connect.
        if not person.endpoints:
            self._connect(person, self._new_endpoint(person))
        elif self._room(3) and rng.random() < config.flap_share:
            # Room for both events and a copy of the first: a run ends exactly on its count.
            endpoint = rng.choice(person.endpoints)
            self._disconnect(person, endpoint)
            same = rng.random() < 0.5
            self._connect(person, endpoint if same else self._new_endpoint(person))
        elif len(person.endpoints) < config.max_endpoints and rng.random() < 0.5:
            self._connect(person, self._new_endpoint(person))
        else:
            self._disconnect(person, rng.choice(person.endpoints))

    def _new_endpoint(self, person: _Identity) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def _common(self, person: _Identity, event_type: str) -> dict[str, str]:
        params = {
            "AccountSid": self.config.account,
            "ServiceSid": self.config.service,
            "EventType": event_type,
            "Identity": person.name,
        }
        if person is not self._system:
            params["EndpointId"] = self._rng.choice(person.endpoints)
        return params

    def _headers(self) -> dict[str, str]:
        return {IDEMPOTENCY_HEADER: f"{self._rng.getrandbits(128):032x}"}

    def _connect(self, person: _Identity, endpoint: str) -> None:
        person.endpoints.append(endpoint)
        self._reachability(person, endpoint, connected=True)

    def _disconnect(self, person: _Identity, endpoint: str) -> None:
        person.endpoints.remove(endpoint)
        self._reachability(person, endpoint, connected=False)

    def _reachability(self, person: _Identity, endpoint: str, *, connected: bool) -> None:
        event_id = person.next_event_id
        person.next_event_id += 1
        params = reachability(
            person.name,
            endpoint,
            event_id,
            bool(person.endpoints),
            connected=connected,
            service_sid=self.config.service,
            account_sid=self.config.account,
        )
        draft = _Draft(params, self._headers())
        rng = self._rng
        if not connected and rng.random() < self.config.lost_disconnects:
            self._faults["lost_disconnect"] += 1
            return
        self._spend()
        if rng.random() < self.config.reorder:
            draft.fault = "late"
            self._hold(person, _Held(rng.randint(1, 3), draft))
        else:
            self._deliver(person, draft)

    def _hold(self, person: _Identity, held: _Held) -> None:
        person.held.append(held)
        self._held += 1
        self._faults[held.draft.fault or ""] += 1

    def _deliver(self, person: _Identity, draft: _Draft) -> None:
        """Puts a webhook in the output, with the outcome it should get; after a fresh one,
        releases what its identity held back for it."""
        params = draft.params
        if params["EventType"] in REACHABILITY_EVENT_TYPES:
            event = rules.Event(
                person.name,
                params["EndpointId"],
                int(params["EventId"]),
                online=params["IsIdentityOnline"] == "true",
                connected=params["EventType"] == REACHABILITY_EVENT_TYPES[0],
            )
            outcome = rules.classify(person.view, event).value
            if outcome == Outcome.APPLIED:
                rules.apply(person.view, event, now=0)
        else:
            # Every collection webhook has a token of its own; a copy has the same.
            outcome = "duplicate" if draft.fault == "duplicate" else "applied"
        self._outcomes[outcome] += 1
        self._out.append(Webhook(params, draft.headers, person.name, outcome, draft.fault))
        if draft.fault is not None:
            return
        for held in person.held:
            held.countdown -= 1
        if self._room(1) and self._rng.random() < self.config.duplicates:
            self._spend()
            copy = _Draft(params, draft.headers, "duplicate")
            self._hold(person, _Held(self._rng.choice((0, 0, 1, 2)), copy))
        due = [held for held in person.held if held.countdown <= 0]
        person.held = [held for held in person.held if held.countdown > 0]
        for held in due:
            self._held -= 1
            self._deliver(person, held.draft)

    def _release_all(self) -> None:
        for person in [*self._identities, self._system]:
            due, person.held = person.held, []
            for held in due:
                self._held -= 1
                self._deliver(person, held.draft)

    # Documents, lists and maps.

    def _collection_event(self, owner: _Identity) -> None:
        rng = self._rng
        kind = rng.choice(("document", "list", "map"))
        current = owner.collections.get(kind)
        if current is None:
            owner.serial += 1
            prefix = {"document": "ET", "list": "ES", "map": "MP"}[kind]
            name = {"document": "settings", "list": "todo", "map": "scores"}[kind]
            current = Collection(
                kind, prefix + f"{rng.getrandbits(128):032x}", f"{name}-{owner.serial}"
            )
            owner.collections[kind] = current
            event_type = f"{kind}_created"
        elif kind == "document":
            event_type = "document_removed" if rng.random() < 0.1 else "document_updated"
        else:
            roll = rng.random()
            if roll < 0.05:
                event_type = f"{kind}_removed"
            elif current.items and roll < 0.35:
                event_type = f"{kind}_item_updated"
            elif current.items and roll < 0.55:
                event_type = f"{kind}_item_removed"
            else:
                event_type = f"{kind}_item_added"
        params = self._common(owner, event_type) | collection_params(rng, current, event_type)
        if event_type.endswith("_removed") and "_item_" not in event_type:
            del owner.collections[kind]
        self._spend()
        self._deliver(owner, _Draft(params, self._headers()))
