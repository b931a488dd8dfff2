"""The listing cursor: where ``GET /v1/services/{sid}/online`` resumes (a bucket, and the
last name listed in it), as an opaque URL-safe string."""

from __future__ import annotations

import base64
import binascii
import json

from presence.events import utf8_encodable
from presence.keys import BUCKETS
from presence.store.base import InvalidCursor


def encode_cursor(bucket: int, after: str) -> str:
    raw = json.dumps([bucket, after], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Raises ``InvalidCursor`` for anything ``encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        bucket, after = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise InvalidCursor("cursor is not one this service handed out") from None
    if (
        type(bucket) is not int
        or not 0 <= bucket < BUCKETS
        or not isinstance(after, str)
        or not utf8_encodable(after)
    ):
        raise InvalidCursor("cursor is not one this service handed out")
    return bucket, after
