"""What the change feed holds and what a read of it returns: each change (as it was published
on pub/sub), the cursor after it, and why a cursor cannot be resumed from."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from presence.feed.cursor import FeedCursor, Position
from presence.timestamps import iso_from_ms
from presence.twilio import SID_LENGTH

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
