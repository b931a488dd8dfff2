"""The listing cursor: where ``GET /v1/services/{sid}/online`` resumes (a bucket, a page of
it, and the last name listed in that page) and the feed cursor of the listing, as an opaque
URL-safe string."""

from __future__ import annotations

import base64
import binascii
import json

from presence.events import utf8_encodable
from presence.feed.cursor import FeedCursor, InvalidFeedCursor
from presence.keys import BUCKETS, PAGES
from presence.store.base import InvalidCursor


def encode_cursor(bucket: int, page: int, after: str, feed: FeedCursor) -> str:
    raw = json.dumps([bucket, page, after, feed.encode()], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int, str, FeedCursor]:
    """Raises ``InvalidCursor`` for anything ``encode_cursor`` did not make."""
    invalid = InvalidCursor("cursor is not one this service handed out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
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
        return bucket, page, after, FeedCursor.decode(feed)
    except InvalidFeedCursor:
        raise invalid from None
