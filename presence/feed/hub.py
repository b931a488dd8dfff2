"""One process, many followers of the change feed: a reader per followed service fans its
changes out to every client of that service in the process, instead of one Redis reader per
client.

A service's reader wakes when a change of the service is published (one pub/sub subscription
per process tells it) and at least every ``poll_interval`` (a message can be missed), reads
the feed from where it is, and hands each change to the subscribers that want it (found by
identity, not by asking each). A subscriber with ``QUEUE_SIZE`` changes waiting is too slow to
read its stream: it is dropped, and resumes by cursor on a new connection. At most
``max_readers`` reads run at once, each one pipeline per Redis node; at most ``max_streams``
subscribers are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from presence.feed.cursor import FeedCursor
from presence.feed.entries import FeedEntry, FeedRead, ResetReason
from presence.metrics import Metrics
from presence.model import StoreUnavailable
from presence.waits import set_within

log = logging.getLogger("presence.feed")

POLL_INTERVAL_SECONDS = 1.0
"""How often a reader reads even without a wake-up (a pub/sub message can be missed)."""
SETTLE_SECONDS = 0.002
"""A change stored in this very millisecond is readable in the next: how soon to read again."""
STOP_SECONDS = 5.0
"""How long ``close`` waits for the readers (redis-py can swallow a cancellation that lands
while it connects, so a reader is asked to stop, and not waited for without end)."""
READ_LIMIT = 500
QUEUE_SIZE = 4 * READ_LIMIT
"""Changes waiting for one subscriber at most; beyond, it is dropped as too slow. Room for a
few reads: a client that keeps up is never dropped by one burst."""
MAX_READERS = 4


class FeedSource(Protocol):
    """Where the hub reads the feed from (the store: it implements this and more)."""

    async def read_feed(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        identities: Collection[str] | None = None,
    ) -> FeedRead: ...


class TooManyStreams(Exception):
    """PRESENCE_MAX_STREAMS subscribers are open in this process."""


@dataclass(frozen=True)
class Reset:
    """Redis does not hold what the subscriber's cursor saw any more, or it is past the
    retention: the subscriber starts over."""

    reason: ResetReason
    cursor: FeedCursor
    """Now: the stream goes on from here."""


@dataclass(frozen=True)
class Closed:
    """The stream ends: the process is stopping, or the subscriber was too slow."""

    reason: str


Delivery = tuple[FeedEntry, FeedCursor] | Reset | Closed
"""A change and the cursor right after it; or a reset; or the end."""


class Subscriber:
    """One client following one service's feed in this process: what is handed to it waits
    in a queue it takes from (a deque and a future: lighter than an asyncio.Queue, which a
    thousand idle streams would each carry)."""

    __slots__ = ("_waiter", "identities", "joined_at", "pending", "read_to", "service_sid")

    def __init__(
        self, service_sid: str, identities: frozenset[str] | None, joined_at: FeedCursor
    ) -> None:
        self.service_sid = service_sid
        self.identities = identities
        self.joined_at = joined_at
        """The reader's cursor when the subscriber joined: every change after it is queued."""
        self.read_to = joined_at
        """Where the reader last read to: every change up to it is queued (or taken)."""
        self.pending: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, delivery: Delivery) -> None:
        self.pending.append(delivery)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, within: float) -> Delivery | None:
        """The next delivery, or None when there was none for ``within`` seconds."""
        if not self.pending:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                # Not asyncio.wait_for: on 3.11 it can lose a cancellation (presence.waits).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await self._waiter
            finally:
                self._waiter = None
        return self.pending.popleft() if self.pending else None


@dataclass(eq=False)
class _Reader:
    """The reader of one service, and its subscribers, by the identity they follow."""

    service_sid: str
    cursor: FeedCursor
    everything: set[Subscriber] = field(default_factory=set)
    """Subscribers of every change of the service."""
    by_identity: dict[str, set[Subscriber]] = field(default_factory=dict)
    count: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def add(self, subscriber: Subscriber) -> None:
        self.count += 1
        if subscriber.identities is None:
            self.everything.add(subscriber)
            return
        for name in subscriber.identities:
            self.by_identity.setdefault(name, set()).add(subscriber)

    def discard(self, subscriber: Subscriber) -> bool:
        """Removes it; False when it was not there."""
        if subscriber.identities is None:
            if subscriber not in self.everything:
                return False
            self.everything.discard(subscriber)
        else:
            first = next(iter(subscriber.identities), None)
            if first is None or subscriber not in self.by_identity.get(first, ()):
                return False
            for name in subscriber.identities:
                followers = self.by_identity[name]
                followers.discard(subscriber)
                if not followers:
                    del self.by_identity[name]
        self.count -= 1
        return True

    def subscribers(self) -> list[Subscriber]:
        every = set(self.everything)
        for followers in self.by_identity.values():
            every |= followers
        return list(every)

    def of(self, identity: str) -> list[Subscriber]:
        return [*self.everything, *self.by_identity.get(identity, ())]


class FeedHub:
    """The followers of the change feed in one process (see the module's docstring)."""

    def __init__(
        self,
        store: FeedSource,
        metrics: Metrics,
        *,
        max_streams: int,
        wakeups: Callable[[], AsyncIterator[str]] | None = None,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        max_readers: int = MAX_READERS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_streams = max_streams
        self.poll_interval = poll_interval
        self._wakeups = wakeups
        self._readers: dict[str, _Reader] = {}
        self._reads = asyncio.Semaphore(max_readers)
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.open = 0

    # -- subscribers ------------------------------------------------------------------------

    async def subscribe(
        self, service_sid: str, identities: Collection[str] | None = None
    ) -> Subscriber:
        """A new subscriber of ``service_sid`` (only ``identities`` when given): every change
        after its ``joined_at`` is queued for it. Raises ``TooManyStreams``."""
        if self._closed:
            raise TooManyStreams("this process is stopping")
        if self.open >= self.max_streams:
            raise TooManyStreams(f"{self.max_streams} change streams are open")
        self.open += 1  # counted before the first await, so the bound holds under a burst
        self.metrics.feed_streams.inc()
        try:
            reader = self._readers.get(service_sid)
            if reader is None:
                start = (await self.store.read_feed(service_sid, None, limit=1)).cursor
                # Another subscriber of the same service may have started one meanwhile.
                reader = self._readers.get(service_sid) or self._start(service_sid, start)
        except BaseException:
            self._closed_one()
            raise
        names = None if identities is None else frozenset(identities)
        subscriber = Subscriber(service_sid, names, reader.cursor)
        reader.add(subscriber)
        self._ensure_listener()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        reader = self._readers.get(subscriber.service_sid)
        if reader is None or not reader.discard(subscriber):
            return  # dropped already, or its reader is gone
        self._closed_one()
        if not reader.count:
            # Nobody of this process follows the service: its reader stops.
            del self._readers[subscriber.service_sid]
            if reader.task is not None:
                reader.task.cancel()

    def _closed_one(self) -> None:
        self.open -= 1
        self.metrics.feed_streams.dec()

    @contextlib.asynccontextmanager
    async def subscription(
        self, service_sid: str, identities: Collection[str] | None = None
    ) -> AsyncIterator[Subscriber]:
        subscriber = await self.subscribe(service_sid, identities)
        try:
            yield subscriber
        finally:
            self.unsubscribe(subscriber)

    # -- readers ----------------------------------------------------------------------------

    def _start(self, service_sid: str, cursor: FeedCursor) -> _Reader:
        reader = _Reader(service_sid, cursor)
        self._readers[service_sid] = reader
        reader.task = asyncio.create_task(self._follow(reader), name=f"feed-{service_sid}")
        return reader

    def wake(self, service_sid: str) -> None:
        """A change of ``service_sid`` was published: its reader reads now."""
        reader = self._readers.get(service_sid)
        if reader is not None:
            reader.wake.set()

    async def _follow(self, reader: _Reader) -> None:
        backoff = self.poll_interval
        while not self._closed and reader.count:
            await set_within(reader.wake, self.poll_interval)
            reader.wake.clear()
            try:
                more = await self._read(reader)
            except StoreUnavailable as error:
                self.metrics.redis_error("feed")
                log.warning("feed of %s: store unavailable (%s)", reader.service_sid, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("feed of %s: unexpected error", reader.service_sid)
                await asyncio.sleep(backoff)
                continue
            backoff = self.poll_interval
            if more:
                await asyncio.sleep(SETTLE_SECONDS)
                reader.wake.set()

    async def _read(self, reader: _Reader) -> bool:
        """One read; True when more changes are stored already (held back by the watermark
        or the limit)."""
        async with self._reads:
            read = await self.store.read_feed(reader.service_sid, reader.cursor, limit=READ_LIMIT)
        if read.reset is not None:
            self.metrics.feed_resets.labels(read.reset).inc()
            log.warning("feed of %s: reset (%s)", reader.service_sid, read.reset)
            for subscriber in reader.subscribers():
                self._deliver(reader, subscriber, Reset(read.reset, read.cursor))
        for entry, cursor in read.with_cursors():
            for subscriber in reader.of(entry.identity):
                self._deliver(reader, subscriber, (entry, cursor))
        reader.cursor = read.cursor
        for subscriber in reader.subscribers():
            subscriber.read_to = read.cursor
        return read.more

    def _deliver(self, reader: _Reader, subscriber: Subscriber, delivery: Delivery) -> None:
        if len(subscriber.pending) < QUEUE_SIZE:
            subscriber.put(delivery)
            return
        # Too slow to read its stream: dropped rather than buffered without bound; its last
        # event ID resumes it on a new connection.
        if reader.discard(subscriber):
            self.metrics.feed_clients_dropped.inc()
            self._closed_one()
            subscriber.put(Closed("too slow"))

    # -- wake-ups ---------------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._wakeups is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="feed-wakeups")

    async def _listen(self) -> None:
        assert self._wakeups is not None
        async for service_sid in self._wakeups():
            if self._closed:
                return
            self.wake(service_sid)

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Ends every stream (each resumes by cursor elsewhere) and stops the readers."""
        self._closed = True
        tasks = [t for t in [self._listener, *(r.task for r in self._readers.values())] if t]
        for reader in self._readers.values():
            for subscriber in reader.subscribers():
                subscriber.put(Closed("shutdown"))
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            if pending:
                log.warning("%d feed readers did not stop within %ss", len(pending), STOP_SECONDS)
