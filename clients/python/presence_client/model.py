"""What the view hands out: changes (from the feed, or found by a resync after a reset), the
identities a lookup returns, and the errors of the service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Change:
    """One identity's published presence changing, as the view's hooks and ``changes()``
    receive it.

    From the feed, it is the change as the service published it, with the ``cursor`` that
    resumes after it (None when the feed is read as JSON pages: a page's cursor comes after
    all of its changes). With ``resync``, the view found it by reading the snapshot again after
    a reset: the identity's state differs from what the view held before the reset, and
    ``reason``, ``event_id``, ``changed_at`` and ``cursor`` are None (``version`` is the one
    listed, 0 for an identity no longer listed)."""

    service_sid: str
    identity: str
    online: bool
    version: int
    reason: str | None
    """``connected``, ``disconnected`` or ``expired``; None for a resync."""
    event_id: int | None
    changed_at: str | None
    cursor: str | None
    resync: bool = False

    @classmethod
    def published(cls, data: Mapping[str, Any], cursor: str | None) -> Change:
        """A change as the feed carries it (the JSON of the service's pub/sub message)."""
        event_id = data.get("event_id")
        return cls(
            service_sid=str(data["service_sid"]),
            identity=str(data["identity"]),
            online=bool(data["online"]),
            version=int(data["version"]),
            reason=data.get("reason"),
            event_id=None if event_id is None else int(event_id),
            changed_at=data.get("changed_at"),
            cursor=cursor,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity as ``POST /lookup`` answers: with ``pending_offline`` (inside its grace
    period, still published online) and its endpoints, which the feed does not carry."""

    service_sid: str
    identity: str
    online: bool
    pending_offline: bool
    endpoints: tuple[str, ...]
    last_event_id: int | None
    changed_at: str | None
    version: int

    @classmethod
    def looked_up(cls, data: Mapping[str, Any]) -> Identity:
        last_event_id = data.get("last_event_id")
        return cls(
            service_sid=str(data["service_sid"]),
            identity=str(data["identity"]),
            online=bool(data["online"]),
            pending_offline=bool(data["pending_offline"]),
            endpoints=tuple(data.get("endpoints") or ()),
            last_event_id=None if last_event_id is None else int(last_event_id),
            changed_at=data.get("changed_at"),
            version=int(data["version"]),
        )


class PresenceError(Exception):
    """A request to the service failed."""


class PresenceRefused(PresenceError):
    """The service refused the request (a wrong token, ServiceSid or filter): asking again
    cannot help, so the view stops with it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if message else f"{status} {code}")
        self.status = status
        self.code = code


class PresenceUnavailable(PresenceError):
    """The service could not be reached or answered it cannot serve now (a 5xx, a lost
    connection, 30 s of silence on a stream); the view tries again by itself."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
