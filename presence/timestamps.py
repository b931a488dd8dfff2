"""Times as the service shows them: milliseconds since the epoch, written as ISO 8601 UTC."""

from __future__ import annotations

import functools
from datetime import UTC, datetime


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Answers and messages written together mostly share their seconds: each is made once.
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}"


_MILLISECONDS = [f".{ms:03d}Z" for ms in range(1000)]
"""Each time's ending, made once: a lookup writes a thousand times."""


def iso_from_ms(ms: int) -> str:
    """``2026-11-23T10:00:00.123Z`` for a time in milliseconds since the epoch."""
    seconds, milliseconds = divmod(ms, 1000)
    return _second(seconds) + _MILLISECONDS[milliseconds]
