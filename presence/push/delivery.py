"""One push subscription delivered by the replica that holds its lease (``leases``).

It reads the service's change feed from the subscription's committed cursor and POSTs each
change to the URL, signed (``signing``), at least once: each identity's changes in version
order, the next only after the previous was acknowledged (any 2xx); different identities in
flight together, up to ``PRESENCE_PUSH_CONCURRENCY``. A failed attempt (a non-2xx, 3xx
included, or no answer within the timeout) is tried again after a capped exponential
backoff with jitter; ``410 Gone`` disables the subscription.

The committed cursor is the position just before the oldest change not yet acknowledged
(with none, the feed's present), written in Redis with the lease's fencing token: a replica
taking over goes on from it, sending again, with the same ``webhook-id``, the changes after
it that were acknowledged already. When the feed cannot be resumed (past the retention, or
Redis lost a change after the cursor) or the oldest unacknowledged change leaves the
retention, a ``presence.reset`` is decided, kept in Redis (so a replica taking over sends the
same event), and delivered as a barrier: attempts in flight are cancelled, the reset is
tried until a 2xx, and only changes after the position where it was decided follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from presence.feed.cursor import FeedCursor
from presence.feed.entries import FeedEntry, ResetReason
from presence.feed.hub import FeedSource
from presence.metrics import Metrics
from presence.push import signing
from presence.push.records import Attempt, PendingReset, Subscription, status_fields
from presence.push.sender import Outcome, Sender
from presence.store.push import SubscriptionStore
from presence.timestamps import iso_from_ms
from presence.waits import set_within

log = logging.getLogger("presence.push")

WINDOW = 1000
"""Changes read ahead and not yet acknowledged, at most: a receiver that is down keeps the
feed waiting in Redis, not in this process."""
SPAN = 5000
"""Changes read since the oldest not yet acknowledged, at most: one identity's change that
keeps failing lets the others go on this far, not without end (they are kept for the
committed cursor, which cannot pass it)."""
READ_LIMIT = 500
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
POLL_SECONDS = 1.0
"""How often the feed is read without a wake-up (a pub/sub message can be missed)."""
PROBE_AFTER_FAILURES = 5
"""After this many failed attempts in a row the receiver is taken for away: one attempt at a
time, each after a backoff of the subscription's own, until a 2xx (rather than every waiting
change knocking on its own schedule)."""
READ_GAP_SECONDS = 0.01
"""Reads of the feed are this far apart at least: under a burst of changes, each read takes
many (a read asks every bucket of the feed), for at most this much latency."""
COMMIT_SECONDS = 0.2
"""Acknowledgements are committed together, at most this often."""

_SEQUENCE = itertools.count()
"""Ties of the backoff heap, broken by order of failure."""

Now = Callable[[], int]
"""The time in milliseconds (Redis' own, as the feed's)."""


def backoff(attempts: int) -> float:
    """Seconds before the next attempt of an event that failed ``attempts`` times: doubling
    from a second, at most a minute, each between half and all of it (jitter, so receivers
    coming back are not met by every retry at once)."""
    ceiling = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


def webhook_id(subscription_id: str, *parts: str) -> str:
    """The ``webhook-id`` of an event to a subscription: the same on every attempt, on any
    replica, and another for any other event (the event's position and content are in it,
    so a change that takes the place of a lost one has another)."""
    digest = hashlib.sha256("\n".join([subscription_id, *parts]).encode()).hexdigest()
    return "msg_" + digest[:32]


def change_body(entry: FeedEntry) -> tuple[str, bytes]:
    """The webhook-id part and the body of a change's event (the change as published)."""
    changed_at = json.loads(entry.message)["changed_at"]
    body = f'{{"type":"presence.changed","timestamp":"{changed_at}","data":{entry.message}}}'
    p = entry.position
    return f"{p.ms}-{p.seq}-{p.bucket}\n{entry.message}", body.encode()


def reset_body(service_sid: str, reset: PendingReset) -> bytes:
    data = {"service_sid": service_sid, "reason": reset.reason}
    event = {"type": "presence.reset", "timestamp": iso_from_ms(reset.at_ms), "data": data}
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass(eq=False)
class _Item:
    """A change read and not yet acknowledged."""

    entry: FeedEntry
    before: FeedCursor
    """The cursor just before it: the committed cursor while it is the oldest."""
    webhook_id: str
    body: bytes
    failures: int = 0
    task: asyncio.Task[None] | None = None
    acknowledged: bool = False


class _Window:
    """The changes read and not yet acknowledged, in feed order (the oldest gives the
    committed cursor) and by identity (only each identity's oldest, its head, may go): every
    step is O(1), whatever the number of changes a receiver that is away leaves waiting."""

    def __init__(self) -> None:
        self._order: deque[_Item] = deque()
        self._queues: dict[str, deque[_Item]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def span(self) -> int:
        """Changes from the oldest not acknowledged to the newest read."""
        return len(self._order)

    @property
    def oldest(self) -> _Item | None:
        return self._order[0] if self._order else None

    def add(self, item: _Item) -> bool:
        """Adds a change read after every other; whether it is its identity's head."""
        self._order.append(item)
        queue = self._queues.setdefault(item.entry.identity, deque())
        queue.append(item)
        self._size += 1
        return len(queue) == 1

    def acknowledge(self, head: _Item) -> _Item | None:
        """Removes an acknowledged head; the next change of its identity, now its head."""
        head.acknowledged = True
        queue = self._queues[head.entry.identity]
        queue.popleft()
        if not queue:
            del self._queues[head.entry.identity]
        self._size -= 1
        while self._order and self._order[0].acknowledged:
            self._order.popleft()
        return queue[0] if queue else None

    def heads(self) -> list[_Item]:
        return [queue[0] for queue in self._queues.values()]

    def clear(self) -> None:
        self._order.clear()
        self._queues.clear()
        self._size = 0


@dataclass
class _Status:
    failures: int
    last_success_at_ms: int | None
    last_failure_at_ms: int | None
    last_failure: str | None
    attempts: list[Attempt] = field(default_factory=list)
    """Made since the last commit."""


class Delivery:
    """The delivery of one subscription (see the module), while ``holder`` holds its lease."""

    def __init__(
        self,
        subscription: Subscription,
        holder: str,
        *,
        feed: FeedSource,
        store: SubscriptionStore,
        sender: Sender,
        metrics: Metrics,
        now: Now,
        concurrency: int,
        retention_ms: int,
    ) -> None:
        self.subscription = subscription
        self.holder = holder
        self.feed = feed
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.now = now
        self.concurrency = concurrency
        self.retention_ms = retention_ms
        self.window = _Window()
        self._ready: deque[_Item] = deque()
        """Heads whose attempt may start now."""
        self._waiting: list[tuple[float, int, _Item]] = []
        """Heads waiting out a backoff: a heap by when they may go (monotonic)."""
        self._in_flight = 0
        self._hold_until = 0.0
        self._probes = 0
        """Probes failed in a row while the receiver is taken for away."""
        """While the receiver is taken for away, no attempt starts before this (monotonic)."""
        self._back = False
        """A 2xx came after the receiver was taken for away: what waits out a backoff goes."""
        self._new_changes = True
        """The feed may hold changes not read yet (a wake-up says so)."""
        self._last_read = 0.0
        self.read_to = FeedCursor.decode(subscription.cursor)
        self.committed = subscription.cursor
        self.status = _Status(
            subscription.consecutive_failures,
            subscription.last_success_at_ms,
            subscription.last_failure_at_ms,
            subscription.last_failure,
        )
        self._progress = asyncio.Event()
        """Something to do: a change published, an attempt ended."""
        self._last_commit = 0.0
        self._fenced = False
        """Another replica holds the lease now: this one stops."""
        self._gone = False
        """The receiver answered 410 Gone: the subscription is disabled."""
        self._halt = asyncio.Event()
        """Asked to end (``halt``): the lease goes back, or this replica stops."""

    @property
    def service_sid(self) -> str:
        return self.subscription.service_sid

    def update(self, subscription: Subscription) -> None:
        """The subscription as the last renewal found it (its URL or secrets may change)."""
        self.subscription = replace(
            subscription, cursor=self.subscription.cursor, pending_reset=None
        )

    def halt(self) -> None:
        """Asks ``run`` to end, before its task is cancelled: a cancellation alone can be
        lost (redis-py writes through ``asyncio.wait_for`` when a socket timeout is set,
        which on Python 3.11 can swallow it: see ``presence.waits``), and the delivery would
        then go on until its lease ran out."""
        self._halt.set()
        self._progress.set()

    def notify(self) -> None:
        """A change of the service was published: the feed is read again."""
        self._new_changes = True
        self._progress.set()

    def lag_ms(self, now_ms: int) -> int:
        """How far behind the receiver is: from the oldest change not acknowledged."""
        oldest = self.window.oldest
        return 0 if oldest is None else max(0, now_ms - oldest.entry.position.ms)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Delivers until halted and cancelled (the lease lost or given back), or the
        subscription is disabled (410) or its commits refused (another replica holds the
        lease)."""
        try:
            if self.subscription.pending_reset is not None:
                await self._deliver_reset(self.subscription.pending_reset)
            while not (self.ended or self._halt.is_set()):
                await self._read()
                self._start_attempts()
                await self._commit()
                await self._sleep()
        finally:
            await self._cancel_attempts()
        if self._gone:
            log.warning("push %s: the receiver answered 410 Gone: disabled", self.subscription.id)
            await self._commit(force=True, disable=True)

    @property
    def ended(self) -> bool:
        """Whether it stopped for good: disabled by a 410, or fenced off."""
        return self._fenced or self._gone

    async def stop(self) -> None:
        """Stops starting attempts, lets none go on, and commits what was acknowledged."""
        await self._cancel_attempts()
        with contextlib.suppress(Exception):
            await self._commit(force=True)

    async def _sleep(self) -> None:
        timeout = POLL_SECONDS
        now = time.monotonic()
        if self._waiting:
            timeout = min(timeout, max(0.0, self._waiting[0][0] - now))
        if self._ready and self._hold_until > now:
            timeout = min(timeout, self._hold_until - now)
        if self.committed != self._committed_cursor() or self.status.attempts:
            timeout = min(timeout, COMMIT_SECONDS)
        if self._new_changes:
            timeout = min(timeout, max(0.0, self._last_read + READ_GAP_SECONDS - time.monotonic()))
        await set_within(self._progress, timeout)
        self._progress.clear()

    async def _read(self) -> None:
        if len(self.window) >= WINDOW or self.window.span >= SPAN or self._gone:
            return
        # Read on a wake-up, and at least every POLL_SECONDS (a wake-up can be missed).
        since = time.monotonic() - self._last_read
        if since < (READ_GAP_SECONDS if self._new_changes else POLL_SECONDS):
            return
        oldest = self.window.oldest
        if oldest is not None and oldest.entry.position.ms < self.now() - self.retention_ms:
            # Retried until the change leaves the retention: then a reset.
            await self._reset(ResetReason.RETENTION, self.read_to)
            return
        self._new_changes = False
        self._last_read = time.monotonic()
        start = self.read_to
        read = await self.feed.read_feed(self.service_sid, start, limit=READ_LIMIT)
        if read.reset is not None:
            await self._reset(read.reset, read.cursor)
            return
        before = start
        for entry, after in read.with_cursors():
            part, body = change_body(entry)
            item = _Item(entry, before, webhook_id(self.subscription.id, part), body)
            if self.window.add(item):
                self._ready.append(item)
            before = after
        self.read_to = read.cursor
        if read.more:
            self._new_changes = True
            self._progress.set()

    def _start_attempts(self) -> None:
        if self._halt.is_set():
            return
        now = time.monotonic()
        while self._waiting and self._waiting[0][0] <= now:
            self._ready.append(heapq.heappop(self._waiting)[2])
        limit = self.concurrency
        if self.status.failures >= PROBE_AFTER_FAILURES:
            if now < self._hold_until:
                return
            limit = 1
        while self._ready and self._in_flight < limit:
            item = self._ready.popleft()
            item.task = asyncio.create_task(self._attempt(item))
            self._in_flight += 1

    async def _attempt(self, item: _Item) -> None:
        try:
            outcome = await self._post(item.webhook_id, item.body)
        finally:
            item.task = None
            self._in_flight -= 1
        if outcome.acknowledged:
            following = self.window.acknowledge(item)
            if following is not None:
                self._ready.append(following)
            if self._back:
                # The receiver answers again: the changes waiting out a backoff from while it
                # was away go now, rather than each at the end of its own. (Not on every 2xx:
                # a change the receiver refuses by itself would be tried again at each other
                # change's 2xx, its backoff doubling each time, to a minute within seconds.)
                self._back = False
                self._ready.extend(waiting for _, _, waiting in sorted(self._waiting))
                self._waiting.clear()
        else:
            item.failures += 1
            due = time.monotonic() + backoff(item.failures)
            heapq.heappush(self._waiting, (due, next(_SEQUENCE), item))
        self._progress.set()

    async def _post(self, webhook: str, body: bytes) -> Outcome:
        """One attempt, recorded and counted (a 410 ends the delivery)."""
        subscription = self.subscription
        now_ms = self.now()
        headers = signing.headers(subscription.secrets_at(now_ms), webhook, now_ms // 1000, body)
        outcome = await self.sender.post(subscription.url, body, headers)
        self.metrics.push_delivery(outcome.status, outcome.error)
        status = self.status
        status.attempts.append(
            Attempt(now_ms, webhook, outcome.status, outcome.error, outcome.duration_ms)
        )
        if outcome.acknowledged:
            self._back = self._back or status.failures >= PROBE_AFTER_FAILURES
            status.failures = 0
            status.last_success_at_ms = now_ms
            self._probes = 0
        else:
            status.failures += 1
            status.last_failure_at_ms, status.last_failure = now_ms, outcome.failure
            now = time.monotonic()
            # Counted by probe, not by failure: the attempts in flight when the receiver went
            # away fail together, and must not push the first probe a minute away.
            if status.failures >= PROBE_AFTER_FAILURES and now >= self._hold_until:
                self._probes += 1
                self._hold_until = now + backoff(self._probes)
        self._gone = self._gone or outcome.status == 410
        return outcome

    # -- resets -----------------------------------------------------------------------------

    async def _reset(self, reason: ResetReason, cursor: FeedCursor) -> None:
        """A reset decided at ``cursor``: kept in Redis first, then delivered."""
        await self._cancel_attempts()
        self.window.clear()
        self._ready.clear()
        self._waiting.clear()
        self._new_changes = True
        self.read_to = cursor
        encoded = cursor.encode()
        reset = PendingReset(
            webhook_id(self.subscription.id, "reset", reason, encoded), reason, self.now()
        )
        log.warning("push %s: reset (%s)", self.subscription.id, reason)
        await self._commit(force=True, reset=reset)
        await self._deliver_reset(reset)

    async def _deliver_reset(self, reset: PendingReset) -> None:
        """The reset, tried until a 2xx before anything after it."""
        body = reset_body(self.service_sid, reset)
        failures = 0
        while not (self.ended or self._halt.is_set()):
            outcome = await self._post(reset.webhook_id, body)
            if outcome.acknowledged:
                await self._commit(force=True, reset=None)
                return
            failures += 1
            await self._commit(force=True, reset=reset)
            await set_within(self._halt, backoff(failures))

    # -- committing -------------------------------------------------------------------------

    def _committed_cursor(self) -> str:
        oldest = self.window.oldest
        return (self.read_to if oldest is None else oldest.before).encode()

    async def _commit(
        self, *, force: bool = False, reset: PendingReset | None = None, disable: bool = False
    ) -> None:
        cursor = self._committed_cursor()
        status = self.status
        if not force and (
            (cursor == self.committed and not status.attempts)
            or time.monotonic() - self._last_commit < COMMIT_SECONDS
        ):
            return
        fields = status_fields(
            cursor,
            status.failures,
            status.last_success_at_ms,
            status.last_failure_at_ms,
            status.last_failure,
            reset,
        )
        if disable:
            fields["enabled"] = "0"
        attempts, status.attempts = status.attempts, []
        committed = await self.store.commit(
            self.service_sid, self.subscription.id, self.holder, fields, attempts
        )
        self._last_commit = time.monotonic()
        if not committed:
            # Another replica holds the lease now: it goes on from the committed cursor.
            self._fenced = True
            return
        self.committed = cursor

    async def _cancel_attempts(self) -> None:
        """Attempts in flight cancelled: their changes go again at the next start."""
        flying = [(item, item.task) for item in self.window.heads() if item.task is not None]
        for _, task in flying:
            task.cancel()
        await asyncio.gather(*(task for _, task in flying), return_exceptions=True)
        # Those that ended on their own meanwhile were acknowledged, or wait out a backoff.
        self._ready.extendleft(reversed([item for item, task in flying if task.cancelled()]))
