"""``GET /v1/services/{sid}/online``: who is online, a page at a time, with the listing cursor
that resumes it (``ListingCursor``: a bucket, a page of it, the last name listed there, and
the feed cursor taken before the listing's first page)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.events import utf8_encodable
from presence.feed.cursor import FeedCursor, InvalidFeedCursor
from presence.keys import BUCKETS, PAGES, Keyspace
from presence.store.base import OnlinePage
from presence.store.errors import unavailable_as_store_error
from presence.store.feed import FeedReader
from presence.store.scripts import Client, ScriptCall, Scripts, run_scripts

BUCKETS_PER_TRIP = 16
"""Buckets listed per round trip (one list.lua call each)."""


class InvalidListingCursor(ValueError):
    """A listing cursor this service did not hand out."""


@dataclass(frozen=True)
class ListingCursor:
    """Where a listing resumes: after ``after`` in ``page`` of ``bucket``; and the listing's
    feed cursor."""

    bucket: int
    page: int
    after: str
    feed: FeedCursor

    def encode(self) -> str:
        fields = [self.bucket, self.page, self.after, self.feed.encode()]
        raw = json.dumps(fields, separators=(",", ":")).encode("utf-8")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> ListingCursor:
        """Raises ``InvalidListingCursor`` for anything ``encode`` did not make."""
        invalid = InvalidListingCursor("cursor is not one this service handed out")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            bucket, page, after, feed = json.loads(raw)
        except (binascii.Error, ValueError, TypeError, RecursionError):
            raise invalid from None
        if (
            type(bucket) is not int
            or not 0 <= bucket < BUCKETS
            or type(page) is not int
            or not 0 <= page < PAGES
            or not isinstance(after, str)
            or not utf8_encodable(after)
            or not isinstance(feed, str)
        ):
            raise invalid
        try:
            return cls(bucket, page, after, FeedCursor.decode(feed))
        except InvalidFeedCursor:
            raise invalid from None


def _pages(reply: Sequence[Any], versions: bool) -> list[tuple[int, dict[str, int]]]:
    """The pages of a reply of list.lua, 0-based, each with its names (and their versions,
    when asked for; else 0)."""
    pages: list[tuple[int, dict[str, int]]] = []
    position = 0
    step = 2 if versions else 1
    while position < len(reply):
        page, count = int(reply[position]), int(reply[position + 1])
        flat = reply[position + 2 : position + 2 + count * step]
        names = flat[::step]
        found = (
            dict(zip(names, map(int, flat[1::2]), strict=True))
            if versions
            else dict.fromkeys(names, 0)
        )
        pages.append((page - 1, found))
        position += 2 + count * step
    return pages


class Listing:
    """Pages of who is online in a service (see the module)."""

    def __init__(self, redis: Client, keys: Keyspace, scripts: Scripts, feed: FeedReader) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.feed = feed

    async def page(
        self, service_sid: str, limit: int, cursor: str | None, *, versions: bool = False
    ) -> OnlinePage:
        """A page of at most ``limit`` names (and their versions), from ``cursor`` (None: the
        listing's first page). Raises ``InvalidListingCursor``."""
        if cursor:
            at = ListingCursor.decode(cursor)
        else:
            # The feed's position before anything is read: a change made while the pages are
            # read is after it, so the listing plus the feed from it is the current state.
            at = ListingCursor(0, 0, "", await self.feed.now(service_sid, snapshot=True))
        found: dict[str, int] = {}

        def done(next_cursor: ListingCursor | None) -> OnlinePage:
            return OnlinePage(
                list(found),
                None if next_cursor is None else next_cursor.encode(),
                at.feed,
                list(found.values()) if versions else None,
            )

        while at.bucket < BUCKETS:
            batch = range(at.bucket, min(at.bucket + BUCKETS_PER_TRIP, BUCKETS))
            calls = [
                ScriptCall(
                    self.scripts.list,
                    [self.keys.page(b, service_sid, g) for g in range(PAGES)],
                    [
                        at.page + 1 if b == at.bucket else 1,
                        limit - len(found),
                        "1" if versions else "",
                    ],
                )
                for b in batch
            ]
            async with unavailable_as_store_error():
                replies = await run_scripts(self.redis, calls)
            resume: tuple[int, int] | None = None
            for b, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                pages = _pages(reply, versions)
                for g, listed in pages:
                    # A page's names in code-point order: its part of the listing resumes
                    # after the last name given.
                    skip = at.after if (b, g) == (at.bucket, at.page) else None
                    for name in sorted(n for n in listed if skip is None or n > skip):
                        found[name] = listed[name]
                        if len(found) == limit:
                            return done(ListingCursor(b, g, name, at.feed))
                if pages and pages[-1][0] < PAGES - 1:
                    # list.lua stopped once it had enough names, some of which were before
                    # the cursor: the rest of this bucket comes next.
                    resume = (b, pages[-1][0] + 1)
                    break
            bucket, page = resume or (batch.stop, 0)
            at = ListingCursor(bucket, page, "", at.feed)
        return done(None)
