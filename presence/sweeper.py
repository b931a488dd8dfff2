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
from presence.store.base import PresenceStore, StoreUnavailable

log = logging.getLogger("presence.sweeper")

SWEEP_INTERVAL_SECONDS = 0.5
SWEEP_BATCH = 1024
MAX_BACKOFF_SECONDS = 5.0


class Sweeper:
    """Visits due identities every ``interval`` seconds, about ``batch`` of them a pass, and
    passes again at once while more are due."""

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def sweep_once(self) -> bool:
        """One pass; True when more may be due already."""
        result = await self.store.sweep(self.batch)
        metrics = self.metrics
        metrics.sweeps.inc()
        metrics.sweeper_lag.set(result.lag_ms / 1000)
        metrics.endpoints_expired.inc(result.endpoints_expired)
        metrics.published(result.changes)
        log_changes(result.changes)
        return result.more

    async def run(self) -> None:
        """Sweeps until ``stop`` (or cancellation); rides out Redis outages with a growing
        pause."""
        backoff = self.interval
        while not self._stopping.is_set():
            try:
                more = await self.sweep_once()
            except Exception as error:
                # A dead sweeper would leave every deadline to the next webhook of its
                # identity: whatever happens, it keeps going (loudly when it is a bug).
                if isinstance(error, StoreUnavailable):
                    self.metrics.redis_error("sweep")
                    log.warning("sweeper: store unavailable (%s); retry in %.1fs", error, backoff)
                else:
                    log.exception("sweeper: unexpected error; retry in %.1fs", backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = self.interval
            if not more:
                await self._pause(self.interval)
