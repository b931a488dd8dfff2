"""The sweeper: fires offline deadlines and endpoint expiries that have come due.

Every replica runs one. Deadlines live in Redis and each is claimed inside the script that
fires it, so any number of sweepers fire each deadline exactly once, and a deadline set by a
replica that has since died is fired by whichever replica comes by next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from presence.logs import log_changes
from presence.metrics import Metrics
from presence.model import StoreUnavailable, SweepResult
from presence.store.base import PresenceStore
from presence.waits import set_within

log = logging.getLogger("presence.sweeper")

SWEEP_INTERVAL_SECONDS = 0.5
"""The longest pause between passes (a deadline known to come sooner is waited for exactly)."""
SWEEP_BATCH = 256
"""Pages visited per pass (two per bucket): each holds the due identities of a hash of them."""
MAX_BACKOFF_SECONDS = 5.0
RECORD_SLICE = 500
"""Changes logged and counted between two yields to the event loop: a pass that fires
thousands does not hold up the requests meanwhile."""


class Sweeper:
    """Visits due pages when they are due (at most ``interval`` seconds apart), about
    ``batch`` of them a pass, and passes again at once while more are due."""

    def __init__(
        self,
        store: PresenceStore,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
        batch: int = SWEEP_BATCH,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.interval = interval
        self.batch = batch
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Asks ``run`` to return after the pass under way."""
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        await set_within(self._stopping, seconds)

    async def sweep_once(self) -> bool:
        """One pass; True when more may be due already."""
        result = await self.store.sweep(self.batch)
        await self._record(result)
        return result.more

    async def _record(self, result: SweepResult) -> None:
        metrics = self.metrics
        metrics.sweeps.inc()
        metrics.sweeper_lag.set(result.lag_ms / 1000)
        metrics.endpoints_expired.inc(result.endpoints_expired)
        if result.replicas_behind:
            metrics.redis_wait_timeouts.labels("sweep").inc(result.replicas_behind)
            log.warning(
                "sweeper: replicas did not confirm %d page visit(s) in time; their changes are "
                "published, and a failover now would fire them again, with the same versions",
                result.replicas_behind,
            )
        changes = result.changes
        for start in range(0, len(changes), RECORD_SLICE):
            if start:
                await asyncio.sleep(0)
            part = changes[start : start + RECORD_SLICE]
            metrics.published(part)
            log_changes(part)

    def _pause_after(self, result: SweepResult) -> float:
        """Until the next due page known (by the Redis clock), at most ``interval``."""
        if result.next_due_in_ms is None:
            return self.interval
        return min(self.interval, max(0.001, result.next_due_in_ms / 1000))

    async def run(self) -> None:
        """Sweeps until ``stop`` (or cancellation); rides out Redis outages with a growing
        pause. While more is due, the next pass is sent to Redis before the changes of the
        last one are logged and counted, so Redis and Python work at once."""
        backoff = self.interval
        ahead: asyncio.Task[SweepResult] | None = None
        try:
            while not self._stopping.is_set():
                try:
                    result = await (ahead if ahead is not None else self.store.sweep(self.batch))
                except Exception as error:
                    ahead = None
                    # A dead sweeper would leave every deadline to the next webhook of its
                    # identity: whatever happens, it keeps going (loudly when it is a bug).
                    if isinstance(error, StoreUnavailable):
                        self.metrics.redis_error("sweep")
                        log.warning(
                            "sweeper: store unavailable (%s); retry in %.1fs", error, backoff
                        )
                    else:
                        log.exception("sweeper: unexpected error; retry in %.1fs", backoff)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                ahead = None
                backoff = self.interval
                if result.more and not self._stopping.is_set():
                    ahead = asyncio.create_task(self.store.sweep(self.batch))
                await self._record(result)
                if not result.more:
                    await self._pause(self._pause_after(result))
        finally:
            if ahead is not None:
                # A pass sent already has fired what it found: its changes are still counted.
                with contextlib.suppress(Exception):
                    await self._record(await ahead)
