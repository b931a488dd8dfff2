"""What the web layer and the sweeper need from a presence store, in domain terms."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from presence.events import CollectionEvent, ReachabilityEvent
from presence.feed.cursor import FeedCursor, Position
from presence.timestamps import iso_from_ms
from presence.twilio import SID_LENGTH

if TYPE_CHECKING:
    from presence.store.migrate import Migration


class Outcome(StrEnum):
    """What became of a webhook (the ``status`` of its 200 reply)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"


class StoreUnavailable(Exception):
    """Redis could not be reached or refused the write; nothing was half-applied."""


class ReplicasBehind(StoreUnavailable):
    """The write is on the master, but fewer replicas than ``PRESENCE_REDIS_WAIT_REPLICAS``
    confirmed it within ``PRESENCE_REDIS_WAIT_TIMEOUT_MS``: a failover now could lose it.
    ``reply`` is what the write answered (its retry answers duplicate or stale)."""

    def __init__(self, message: str, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Change:
    """One presence change, exactly as published on the changes channels."""

    service_sid: str
    identity: str
    online: bool
    reason: str
    event_id: int | None
    version: int
    changed_at: str

    @classmethod
    def from_message(cls, message: str) -> Change:
        fields: dict[str, Any] = orjson.loads(message)
        return cls(**fields)

    def __str__(self) -> str:
        state = "online" if self.online else "offline"
        return (
            f"{self.service_sid} {self.identity!r} {state} ({self.reason}, "
            f"event {self.event_id}, version {self.version})"
        )


@dataclass(frozen=True)
class EventResult:
    outcome: Outcome
    changes: tuple[Change, ...] = ()
    flap_suppressed: bool = False
    """The event cancelled a pending offline: a rebalancing flap nobody will hear about."""
    endpoints_expired: int = 0


class IdentityPresence(NamedTuple):
    """The answer to "is this identity online?" (a named tuple: a lookup makes a thousand)."""

    service_sid: str
    identity: str
    online: bool = False
    pending_offline: bool = False
    endpoints: tuple[str, ...] = ()
    last_event_id: int | None = None
    changed_at_ms: int | None = None
    version: int = 0


@dataclass(frozen=True)
class OnlinePage:
    identities: list[str]
    next_cursor: str | None
    feed_cursor: FeedCursor
    """Where the change feed stood before the listing's first page: the listing, plus every
    change after it, is the current state."""
    versions: list[int] | None = None
    """Each identity's version, in the same order (when asked for)."""


_IDENTITY_AT = len('{"service_sid":"') + SID_LENGTH + len('","identity":')
"""Where a change message's identity begins (``publish.lua`` writes the members in order)."""


def identity_of(message: str) -> str:
    """The identity of a change message, without parsing all of it."""
    decoded: str = json.JSONDecoder().raw_decode(message, _IDENTITY_AT)[0]
    return decoded


class ResetReason(StrEnum):
    """Why a cursor cannot be resumed from (the ``reason`` of a reset)."""

    RETENTION = "retention"
    """Older than the changes the feed keeps (PRESENCE_FEED_RETENTION_SECONDS)."""
    LOST = "lost"
    """Redis no longer holds a change the cursor may have seen: it lost changes (a restart
    from older data, a failover to a replica behind), lost everything, or is another
    deployment's; or the cursor is of an earlier release, which cannot tell."""


@dataclass(frozen=True)
class FeedEntry:
    """One change on the feed."""

    position: Position
    message: str
    """The change, exactly as published on pub/sub (JSON)."""
    identity: str

    @classmethod
    def of(cls, position: Position, service_sid: str, fields: Mapping[str, str]) -> FeedEntry:
        """From a feed entry's fields: the change's (``publish.lua``), or, written before
        storage format 2, its message (``c``)."""
        if "c" in fields:
            message = fields["c"]
            return cls(position, message, identity_of(message))
        identity, event_id = fields["i"], fields["e"]
        message = (
            '{"service_sid":"'
            + service_sid
            + '","identity":'
            + orjson.dumps(identity).decode()
            + (',"online":true,"reason":"' if fields["o"] == "1" else ',"online":false,"reason":"')
            + fields["r"]
            + '","event_id":'
            + (event_id or "null")
            + ',"version":'
            + fields["v"]
            + ',"changed_at":"'
            + iso_from_ms(int(fields["t"]))
            + '"}'
        )
        return cls(position, message, identity)


@dataclass(frozen=True)
class FeedRead:
    entries: list[FeedEntry]
    cursor: FeedCursor
    """Where the next read resumes: after the last entry, or at the watermark."""
    reset: ResetReason | None = None
    """Why the cursor read from could not be resumed (then ``entries`` is empty and
    ``cursor`` is now)."""
    more: bool = False
    """More changes are stored already: held back by the limit, or stored so recently that
    they are readable a millisecond later."""
    cursors: list[FeedCursor] = field(default_factory=list)
    """The cursor right after each entry, in order."""

    def with_cursors(self) -> Iterator[tuple[FeedEntry, FeedCursor]]:
        """Each change, and the cursor that resumes right after it."""
        return zip(self.entries, self.cursors, strict=True)


@dataclass(frozen=True)
class Stats:
    online: int
    pending_offline: int
    endpoints: int


@dataclass(frozen=True)
class SweepResult:
    changes: list[Change]
    more: bool
    """True when more identities may be due already: sweep again without pausing."""
    lag_ms: int = 0
    """How long past its due time the most overdue identity visited was."""
    endpoints_expired: int = 0
    next_due_in_ms: int | None = None
    """When something not yet due will be (ms from now; None: nothing seen scheduled)."""
    replicas_behind: int = 0
    """Firings (page visits) that fewer replicas than asked for confirmed in time: published
    already; a failover now would fire them again, with the same versions."""


class InvalidCursor(ValueError):
    """A listing cursor this service did not hand out."""


class PresenceStore(Protocol):
    """Presence state, its indices and its change announcements, applied atomically."""

    async def prepare(self) -> Migration | None:
        """Checks the storage format, migrating an older one; before serving (see
        migrate.py)."""
        ...

    async def apply_reachability(self, event: ReachabilityEvent) -> EventResult:
        """Apply a connect or disconnect and publish the presence changes it causes."""
        ...

    async def record(self, event: CollectionEvent, token: str | None) -> Outcome:
        """Republish a document, list or map event on the sync-events channel, once."""
        ...

    async def identity(self, service_sid: str, identity: str) -> IdentityPresence: ...

    async def lookup(self, service_sid: str, identities: Sequence[str]) -> list[IdentityPresence]:
        """Many identities in one round trip, in the order asked."""
        ...

    async def online(
        self, service_sid: str, limit: int, cursor: str | None, *, versions: bool = False
    ) -> OnlinePage:
        """A page of identities published online (with their versions when asked for);
        raises ``InvalidCursor``."""
        ...

    async def read_feed(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        identities: Collection[str] | None = None,
    ) -> FeedRead:
        """The service's changes after ``after`` (None: none, and the cursor of now), at most
        ``limit``, only of ``identities`` when given. A cursor that cannot be resumed from
        (Redis lost what it saw, or it is past the retention) gives a reset."""
        ...

    async def stats(self, service_sid: str) -> Stats: ...

    async def sweep(self, limit: int) -> SweepResult:
        """Visit about ``limit`` pages of identities whose time has come (a deadline or an
        expiry), firing what is due in each."""
        ...

    async def add_activity(self, counts: Mapping[tuple[str, int], Mapping[str, int]]) -> None:
        """Adds webhook outcomes, per (ServiceSid, minute), to what every replica counted."""
        ...

    async def activity(self, service_sid: str, minutes: Sequence[int]) -> list[dict[str, int]]:
        """The outcomes every replica counted for the service in each of ``minutes``."""
        ...

    def published(self) -> AsyncIterator[str]:
        """The ServiceSid of each change as it is published, while iterated (best effort)."""
        ...

    async def ping(self) -> None:
        """Returns when the store answers; raises ``StoreUnavailable`` otherwise."""
        ...

    async def close(self) -> None: ...
