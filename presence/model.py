"""The domain's values, shared by every layer: what became of a webhook, a presence change,
what a query answers, and the store being out of reach. Nothing here knows Redis."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from enum import StrEnum
from typing import Any, NamedTuple

import orjson


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
        """The change a changes-channel message (or a script's reply) carries."""
        fields: dict[str, Any] = orjson.loads(message)
        if fields.keys() != _CHANGE_FIELDS:
            return cls(**fields)  # a TypeError naming the field missing or unknown
        # A frozen dataclass's __init__ sets each field through object.__setattr__: 2 us a
        # change, one for about every webhook. The message's dict holds exactly the fields.
        change = object.__new__(cls)
        object.__setattr__(change, "__dict__", fields)
        return change

    def __str__(self) -> str:
        state = "online" if self.online else "offline"
        return (
            f"{self.service_sid} {self.identity!r} {state} ({self.reason}, "
            f"event {self.event_id}, version {self.version})"
        )


_CHANGE_FIELDS = frozenset(field.name for field in dataclass_fields(Change))


class EventResult(NamedTuple):
    """What an event did (a named tuple: one is made for every webhook)."""

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
