"""Webhook outcomes per service and minute, counted in Redis so that every replica's webhooks
are in them: what ``GET /v1/services/{sid}/activity`` and the dashboard show.

Counting costs a webhook nothing in Redis: each process adds up its outcomes in memory and
adds them to Redis every ``FLUSH_SECONDS`` in one pipeline. A process that dies loses at
most that much of its counts; while Redis is away they wait in memory (the last hour of them
at most).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict

from presence.model import StoreUnavailable
from presence.store.base import PresenceStore
from presence.waits import set_within

log = logging.getLogger("presence.activity")

OUTCOMES = ("applied", "duplicate", "stale", "ignored", "rejected", "flaps_suppressed")
"""What is counted: the outcome of each webhook, and the flaps suppressed."""
FLUSH_SECONDS = 2.0
FINAL_FLUSH_SECONDS = 1.0
"""The flush at shutdown waits this long for Redis at most."""
MINUTES = 60
"""How far back the activity goes: an hour, a minute at a time."""

Minute = int
"""A minute, as the epoch seconds it starts at."""


Count = Annotated[int, Field(ge=0)]


class ActivityMinute(TypedDict):
    """One minute of a service's webhooks, counted by every replica."""

    minute: Annotated[str, Field(description="the minute's start, UTC: 2026-11-23T10:00Z")]
    applied: Count
    duplicate: Count
    stale: Count
    ignored: Count
    rejected: Annotated[
        Count, Field(description="refused once signed (a payload, the account, Redis away)")
    ]
    flaps_suppressed: Annotated[Count, Field(description="rebalancing flaps never published")]


def minute_of(seconds: float) -> Minute:
    return int(seconds // 60) * 60


def minute_label(minute: Minute) -> str:
    return datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%dT%H:%MZ")


class Activity:
    """The counts of this process, and the way they go to Redis."""

    def __init__(
        self,
        store: PresenceStore,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._pending: defaultdict[tuple[str, Minute], Counter[str]] = defaultdict(Counter)
        self._stopping = asyncio.Event()

    def count(self, service_sid: str, outcome: str) -> None:
        self._pending[service_sid, minute_of(self.clock())][outcome] += 1

    async def flush(self) -> None:
        """Adds the counts of this process to Redis; keeps them for later if Redis is away."""
        if not self._pending:
            return
        taken, self._pending = self._pending, defaultdict(Counter)
        try:
            await self.store.add_activity({key: dict(counts) for key, counts in taken.items()})
        except StoreUnavailable:
            oldest = minute_of(self.clock()) - MINUTES * 60
            for key, counts in taken.items():
                if key[1] >= oldest:
                    self._pending[key].update(counts)
            raise

    async def minutes(self, service_sid: str) -> list[ActivityMinute]:
        """The last hour of the service, a minute at a time, oldest first."""
        now = minute_of(self.clock())
        minutes = [now - 60 * back for back in range(MINUTES - 1, -1, -1)]
        stored = await self.store.activity(service_sid, minutes)
        rows: list[ActivityMinute] = []
        for minute, counts in zip(minutes, stored, strict=True):
            total = Counter(counts)
            total.update(self._pending.get((service_sid, minute), Counter()))
            rows.append(
                {
                    "minute": minute_label(minute),
                    "applied": total["applied"],
                    "duplicate": total["duplicate"],
                    "stale": total["stale"],
                    "ignored": total["ignored"],
                    "rejected": total["rejected"],
                    "flaps_suppressed": total["flaps_suppressed"],
                }
            )
        return rows

    async def run(self) -> None:
        """Flushes every ``flush_seconds`` until ``stop``, and once more then (for at most
        ``FINAL_FLUSH_SECONDS``: a shutdown does not wait out a Redis that is away for the
        counts of the last seconds)."""
        while not self._stopping.is_set():
            await set_within(self._stopping, self.flush_seconds)
            final = self._stopping.is_set()
            try:
                async with asyncio.timeout(FINAL_FLUSH_SECONDS if final else None):
                    await self.flush()
            except StoreUnavailable as error:
                log.warning("activity counts kept for later: %s", error)
            except TimeoutError:
                log.warning("activity counts of the last seconds lost: Redis did not answer")
            except Exception:
                log.exception("activity counts: unexpected error")

    def stop(self) -> None:
        self._stopping.set()
