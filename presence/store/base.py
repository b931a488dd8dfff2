"""What the web layer and the sweeper need from a presence store, in domain terms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from presence.events import CollectionEvent, ReachabilityEvent


class Outcome(StrEnum):
    """What became of a webhook (the ``status`` of its 200 reply)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"


class StoreUnavailable(Exception):
    """Redis could not be reached or refused the write; nothing was half-applied."""


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
        fields: dict[str, Any] = json.loads(message)
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


@dataclass(frozen=True)
class IdentityPresence:
    """The answer to "is this identity online?"."""

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


class InvalidCursor(ValueError):
    """A listing cursor this service did not hand out."""


class PresenceStore(Protocol):
    """Presence state, its indices and its change announcements, applied atomically."""

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

    async def online(self, service_sid: str, limit: int, cursor: str | None) -> OnlinePage:
        """A page of identities published online; raises ``InvalidCursor``."""
        ...

    async def stats(self, service_sid: str) -> Stats: ...

    async def sweep(self, limit: int) -> SweepResult:
        """Visit about ``limit`` identities whose time has come (a deadline or an expiry)."""
        ...

    async def ping(self) -> None:
        """Returns when the store answers; raises ``StoreUnavailable`` otherwise."""
        ...

    async def close(self) -> None: ...
