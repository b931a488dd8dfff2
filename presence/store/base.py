"""What the web layer and the sweeper need from a presence store, in domain terms."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from presence.events import CollectionEvent, ReachabilityEvent
from presence.feed.cursor import FeedCursor
from presence.feed.entries import FeedRead
from presence.model import EventResult, IdentityPresence, Outcome, Stats, SweepResult
from presence.store.push import SubscriptionStore


@dataclass(frozen=True)
class OnlinePage:
    identities: list[str]
    next_cursor: str | None
    feed_cursor: FeedCursor
    """Where the change feed stood before the listing's first page: the listing, plus every
    change after it, is the current state."""
    versions: list[int] | None = None
    """Each identity's version, in the same order (when asked for)."""


@dataclass(frozen=True)
class Migration:
    """What a migration did."""

    found: int
    """Format-1 identity hashes found."""
    moved: int
    """Moved into their pages."""
    kept: int
    """Already in their pages (written there after an earlier migration): the hash went."""
    seconds: float
    format_before: str | None
    """The keyspace's format key before (None: format 1, or an empty keyspace)."""


class PresenceStore(Protocol):
    """Presence state, its indices and its change announcements, applied atomically."""

    subscriptions: SubscriptionStore
    """The push subscriptions of every service."""
    retention_ms: int
    """How long the change feed keeps a change."""

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
        raises ``InvalidListingCursor``."""
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
