"""Times as the service shows them: milliseconds since the epoch, written as ISO 8601 UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_from_ms(ms: int) -> str:
    """``2026-11-23T10:00:00.123Z`` for a time in milliseconds since the epoch."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"
