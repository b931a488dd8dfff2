"""Which replica delivers which push subscription: one at a time, under a lease in Redis of
10 s renewed every 2 s, with a fencing token that makes a former holder's commits refused.

Every 2 s each replica says it is alive (a score in ``p:push:replicas``), counts the live
ones, reads every subscription, renews the leases it holds (learning of a changed URL or
secret, and stopping at once for one disabled or deleted), gives back those beyond its share
(ceil(subscriptions / live replicas)) and takes unheld ones up to it: the leases spread
over the live replicas, and one that dies is taken over within 12 s. A replica that cannot
renew (Redis away) stops its deliveries before its leases end; on SIGTERM it stops starting
attempts, commits, and gives every lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from presence.feed.hub import FeedSource
from presence.metrics import Metrics
from presence.model import StoreUnavailable
from presence.push.delivery import Delivery
from presence.push.records import Subscription, SubscriptionState
from presence.push.sender import Sender
from presence.store.push import SubscriptionStore
from presence.waits import set_within

log = logging.getLogger("presence.push")

LEASE_MS = 10_000
RENEW_SECONDS = 2.0
STOP_MARGIN_SECONDS = 2.0
"""A replica that could not renew stops its deliveries this long before its leases end."""
STOP_SECONDS = 5.0


@dataclass(eq=False)
class _Held:
    holder: str
    delivery: Delivery
    task: asyncio.Task[None]
    renewed: float
    """When the lease was last taken or renewed (monotonic)."""


class Leases:
    """This replica's part of the push subscriptions (see the module)."""

    def __init__(
        self,
        store: SubscriptionStore,
        feed: FeedSource,
        metrics: Metrics,
        *,
        concurrency: int,
        timeout_seconds: float,
        allow_private: bool,
        retention_ms: int,
        wakeups: Callable[[], AsyncIterator[str]] | None = None,
    ) -> None:
        self.store = store
        self.feed = feed
        self.metrics = metrics
        self.concurrency = concurrency
        self.retention_ms = retention_ms
        self.sender = Sender(timeout_seconds=timeout_seconds, allow_private=allow_private)
        self.replica = "r" + uuid.uuid4().hex[:12]
        self.held: dict[tuple[str, str], _Held] = {}
        self._wakeups = wakeups
        self._listener: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._turn_now = asyncio.Event()
        self._clock = (0, time.monotonic())
        """Redis' time at a moment of the monotonic clock: the time deliveries go by."""

    def now_ms(self) -> int:
        redis_ms, at = self._clock
        return redis_ms + round((time.monotonic() - at) * 1000)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    await self._turn()
                except StoreUnavailable as error:
                    log.warning("push: Redis unavailable (%s)", error)
                    self._stop_unrenewed()
                except Exception:
                    log.exception("push: unexpected error")
                await set_within(self._turn_now, RENEW_SECONDS)
                self._turn_now.clear()
        finally:
            await self._listen_while(holding=False)
            await self._give_back()
            await self.sender.close()

    def stop(self) -> None:
        """Asks the loop to give every lease back and end."""
        self._stopping.set()
        self._turn_now.set()

    def nudge(self) -> None:
        """A subscription changed here: the next turn is now, not in up to 2 s (a new one
        is taken, a disabled one stopped, at once on this replica)."""
        self._turn_now.set()

    async def _turn(self) -> None:
        subscriptions = await self.store.every_subscription()
        self._count(subscriptions)
        enabled = [s for s in subscriptions if s.enabled]
        if not enabled and not self.held:
            # Nothing to deliver: Redis is left as it is (not even a heartbeat, nor a
            # subscription to the changes channel).
            await self._listen_while(holding=False)
            return
        redis_ms = await self.store.time_ms()
        self._clock = (redis_ms, time.monotonic())
        live = await self.store.live_replicas(self.replica, redis_ms + LEASE_MS, redis_ms)
        await self._renew()
        share = math.ceil(len(enabled) / max(live, 1))
        while len(self.held) > share:
            # The last taken goes back: another replica, under its share, takes it.
            await self._end(next(reversed(self.held)), give_back=True)
        candidates = [s for s in enabled if (s.service_sid, s.id) not in self.held]
        random.shuffle(candidates)
        while candidates and len(self.held) < share:
            # As many as the share lacks, at once; again with others for those held elsewhere.
            wanted, candidates = (
                candidates[: share - len(self.held)],
                candidates[share - len(self.held) :],
            )
            await self._take(wanted)
        await self._listen_while(holding=bool(self.held))
        self.metrics.push_leases.set(len(self.held))
        now = self.now_ms()
        lags = [held.delivery.lag_ms(now) for held in self.held.values()]
        self.metrics.push_lag.set(max(lags, default=0) / 1000)

    def _count(self, subscriptions: list[Subscription]) -> None:
        for state in SubscriptionState:
            count = sum(1 for s in subscriptions if s.state is state)
            self.metrics.push_subscriptions.labels(state.value).set(count)

    async def _renew(self) -> None:
        for key, held in list(self.held.items()):
            if held.task.done():
                # Disabled by a 410, or fenced off: its lease goes back.
                await self._end(key, give_back=True)
        # Every lease in one round trip (per node): one at a time, on an event loop kept busy
        # by deliveries, a hundred took most of the lease's 10 s.
        keys = list(self.held)
        leases = [(sid, sub, self.held[sid, sub].holder) for sid, sub in keys]
        failed: Exception | None = None
        for key, found in zip(keys, await self.store.renew(leases, LEASE_MS), strict=True):
            if isinstance(found, Exception):
                failed = failed or found  # left to _stop_unrenewed if it lasts
            elif found is None:
                # Disabled, deleted, or taken by another: no attempt starts here any more.
                await self._end(key, give_back=False)
            else:
                held = self.held[key]
                held.delivery.update(found)
                held.renewed = time.monotonic()
        if failed is not None:
            raise failed

    async def _take(self, subscriptions: list[Subscription]) -> None:
        wanted = [(s.service_sid, s.id) for s in subscriptions]
        for taken in await self.store.acquire(wanted, self.replica, LEASE_MS):
            if taken is None or isinstance(taken, Exception):
                continue  # held by another replica, or to be tried at the next turn
            holder, current = taken
            delivery = Delivery(
                current,
                holder,
                feed=self.feed,
                store=self.store,
                sender=self.sender,
                metrics=self.metrics,
                now=self.now_ms,
                concurrency=self.concurrency,
                retention_ms=self.retention_ms,
            )
            task = asyncio.create_task(delivery.run(), name=f"push-{current.id}")
            self.held[(current.service_sid, current.id)] = _Held(
                holder, delivery, task, time.monotonic()
            )

    async def _end(self, key: tuple[str, str], *, give_back: bool) -> None:
        held = self.held.pop(key)
        held.delivery.halt()
        held.task.cancel()
        await asyncio.gather(held.task, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            if give_back:
                await held.delivery.stop()
                await self.store.release(*key, held.holder)

    def _stop_unrenewed(self) -> None:
        """Deliveries whose lease could not be renewed stop before it ends: another replica
        may take it then."""
        limit = LEASE_MS / 1000 - STOP_MARGIN_SECONDS
        for key, held in list(self.held.items()):
            if time.monotonic() - held.renewed > limit:
                log.warning("push %s: lease not renewed in time: stopped", key[1])
                held.delivery.halt()
                held.task.cancel()
                del self.held[key]

    async def _give_back(self) -> None:
        """At shutdown: no attempt starts any more, what was acknowledged is committed,
        every lease goes back at once, and this replica is no longer counted."""
        for key in list(self.held):
            await self._end(key, give_back=True)
        with contextlib.suppress(StoreUnavailable):
            await self.store.leave(self.replica)

    # -- wake-ups ---------------------------------------------------------------------------

    async def _listen_while(self, *, holding: bool) -> None:
        """Follows the changes channel while this replica holds a lease, only then."""
        if holding and self._listener is None and self._wakeups is not None:
            self._listener = asyncio.create_task(self._listen(self._wakeups), name="push-wakeups")
        elif not holding and self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    async def _listen(self, wakeups: Callable[[], AsyncIterator[str]]) -> None:
        async for service_sid in wakeups():
            for (sid, _), held in self.held.items():
                if sid == service_sid:
                    held.delivery.notify()
