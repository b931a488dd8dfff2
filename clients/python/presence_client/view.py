"""``PresenceView``: a service's published presence (or that of some of its identities), kept
exactly in step with the service.

How (docs/changes.md, "Following changes"): every page of ``/online?versions=true``, keeping
the first page's ``feed_cursor`` (for a filtered view, that cursor and then ``/lookup`` of
the identities); then the change feed from that cursor, taking a change only when its version
is above the one held; after a lost connection, the feed again from the last cursor, on any
replica, with backoff; on a reset, the reset hook, a new snapshot, and a change hook call for
each identity whose state the new snapshot changes (``resync``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Literal, TypeVar

import aiohttp

from presence_client.api import PAGE_SIZE, FeedApi, InvalidCursor
from presence_client.held import Held
from presence_client.model import Change, Identity, PresenceError, PresenceUnavailable

log = logging.getLogger("presence_client")

_T = TypeVar("_T")

Transport = Literal["auto", "stream", "poll"]
ChangeHook = Callable[[Change], Awaitable[None] | None]
ResetHook = Callable[[str], Awaitable[None] | None]

SILENCE_SECONDS = 30.0
"""A stream silent this long is lost (the service writes at least every 10 s)."""
POLL_WAIT_SECONDS = 25.0
STALLS_BEFORE_POLLING = 2
"""Streams in a row that brought not one byte before the silence ran out: a proxy holds
streams back, and ``auto`` reads JSON pages instead."""
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
MALFORMED = (ValueError, KeyError, TypeError)
"""What reading a reply that is not as the API writes it raises: tried again, like a lost
connection."""


class _Reset(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Closed:
    """What an iterator of changes receives when the view stops."""


_CLOSED = _Closed()


class _Changes:
    """An iterator of the view's changes from the moment it was made."""

    def __init__(self, view: PresenceView) -> None:
        self._view = view
        self._queue: asyncio.Queue[Change | _Closed] = asyncio.Queue()

    def put(self, item: Change | _Closed) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> _Changes:
        return self

    async def __anext__(self) -> Change:
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # every later call ends too
            if self._view.error is not None:
                raise self._view.error
            raise StopAsyncIteration
        return item


class PresenceView:
    """Who is online in one service (or among ``identities``, at most 1000), as published.

    ``async with PresenceView(url, sid, token=...) as view:`` reads the snapshot, then follows
    the change feed in the background until the block ends. ``on_change`` is called with each
    change newer than what the view held, once; ``on_reset`` with the reason of each reset,
    before the resync's changes. Either may be a coroutine function (it is awaited: the feed
    is read no faster than the hooks take it).

    ``transport``: ``stream`` (Server-Sent Events), ``poll`` (JSON long-poll, for a proxy that
    breaks streams), or ``auto``: streams, and long-poll after two streams in a row brought
    nothing at all. A ``session`` of the caller's is used as it is, and left open.
    """

    def __init__(
        self,
        url: str,
        service_sid: str,
        *,
        token: str | None = None,
        identities: Iterable[str] | None = None,
        on_change: ChangeHook | None = None,
        on_reset: ResetHook | None = None,
        transport: Transport = "auto",
        session: aiohttp.ClientSession | None = None,
        silence_seconds: float = SILENCE_SECONDS,
    ) -> None:
        names = None if identities is None else list(dict.fromkeys(identities))
        if names is not None and not 1 <= len(names) <= PAGE_SIZE:
            raise ValueError(f"a view follows 1 to {PAGE_SIZE} identities, or all")
        self.url = url
        self.service_sid = service_sid
        self._token = token
        self._identities = names
        self._on_change = on_change
        self._on_reset = on_reset
        self._transport: Literal["stream", "poll"] = "poll" if transport == "poll" else "stream"
        self._fall_back = transport == "auto"
        self._session = session
        self._own_session = session is None
        self._silence = silence_seconds
        self._api: FeedApi | None = None
        self._held = Held()
        self._cursor: str | None = None
        self._resync = False
        self._stalls = 0
        self._backoff = FIRST_BACKOFF_SECONDS
        self._task: asyncio.Task[None] | None = None
        self._iterators: weakref.WeakSet[_Changes] = weakref.WeakSet()
        self.error: PresenceError | None = None
        """Why the view stopped following, when the service refused it."""

    # -- what it holds ---------------------------------------------------------------------

    def is_online(self, identity: str) -> bool:
        """Whether ``identity`` is published online (pending offline included)."""
        return identity in self._held.online

    def online(self) -> frozenset[str]:
        """Every identity published online."""
        return frozenset(self._held.online)

    def version(self, identity: str) -> int:
        """The version of the last change held for ``identity`` (0: none)."""
        return self._held.versions.get(identity, 0)

    @property
    def cursor(self) -> str | None:
        """Where the feed resumes (None while a snapshot is read)."""
        return self._cursor

    @property
    def transport(self) -> Literal["stream", "poll"]:
        """How the feed is read now."""
        return self._transport

    def changes(self) -> AsyncIterator[Change]:
        """Every change from now on, as ``on_change`` gets them; ends when the view closes,
        and raises the error that stopped it. Changes wait in the iterator until read."""
        iterator = _Changes(self)
        if self._task is not None and self._task.done():
            iterator.put(_CLOSED)
        self._iterators.add(iterator)
        return iterator

    async def lookup(self, identities: Iterable[str]) -> list[Identity]:
        """``POST /lookup`` of these identities, in order, 1000 a request: with
        ``pending_offline`` and endpoints, which the feed does not carry."""
        return await self._require_api().lookup(identities)

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Reads the snapshot (trying again while the service cannot answer), then follows
        the feed in the background. Raises ``PresenceRefused`` if the service refuses (the
        view is closed then)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._api = FeedApi(
            self._session, self.url, self.service_sid, self._token, self._identities,
            self._silence,
        )  # fmt: skip
        try:
            await self._first_snapshot()
        except BaseException as error:
            if isinstance(error, PresenceError):
                self.error = error
            await self.close()
            raise
        self._task = asyncio.create_task(self._follow(), name=f"presence view {self.service_sid}")

    async def _first_snapshot(self) -> None:
        while True:
            try:
                await self._snapshot()
                return
            except PresenceUnavailable as error:
                await self._retry(error)
            except (InvalidCursor, *MALFORMED) as error:  # a proxy's reply, another release's
                await self._retry(PresenceUnavailable(f"an unexpected reply: {error!r}"))

    async def close(self) -> None:
        """Stops following; the iterators of ``changes()`` end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._ended()
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> PresenceView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_api(self) -> FeedApi:
        if self._api is None:
            raise RuntimeError("start the view first")
        return self._api

    def _ended(self) -> None:
        for iterator in list(self._iterators):
            iterator.put(_CLOSED)

    # -- following -------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            try:
                if self._cursor is None:
                    await self._snapshot()
                elif self._transport == "poll":
                    await self._poll()
                else:
                    await self._stream()
            except _Reset as reset:
                await self._reset(reset.reason)
            except InvalidCursor:
                await self._reset("invalid_cursor")
            except PresenceUnavailable as error:
                await self._retry(error)
            except MALFORMED as error:  # a reply not as the API writes it: a proxy's, say
                await self._retry(PresenceUnavailable(f"an unexpected reply: {error!r}"))
            except PresenceError as error:
                log.error("presence view of %s stopped: %s", self.service_sid, error)
                self.error = error
                self._ended()
                return

    async def _stream(self) -> None:
        try:
            await self._read_stream()
        except PresenceUnavailable:
            self._count_stall()
            raise
        # The service ended the stream (it is stopping, say): resumed from the cursor.
        await self._retry(None)

    async def _read_stream(self) -> None:
        api = self._require_api()
        assert self._cursor is not None
        async with contextlib.aclosing(api.events(self._cursor)) as events:
            async for event in events:
                self._stalls = 0
                self._backoff = FIRST_BACKOFF_SECONDS
                if event.event == "reset" and event.data is not None:
                    raise _Reset(str(json.loads(event.data).get("reason")))
                if event.event == "change" and event.data is not None:
                    await self._take(Change.published(json.loads(event.data), event.id))
                # After the change is taken: a reconnect resumes after the last one held.
                if event.id:
                    self._cursor = event.id

    async def _poll(self) -> None:
        assert self._cursor is not None
        page = await self._require_api().poll(self._cursor, POLL_WAIT_SECONDS)
        self._backoff = FIRST_BACKOFF_SECONDS
        if page.reset is not None:
            raise _Reset(page.reset)
        for change in page.changes:
            await self._take(change)
        self._cursor = page.cursor

    def _count_stall(self) -> None:
        if not self._fall_back:
            return
        self._stalls = self._stalls + 1 if self._require_api().stream_stalled else 0
        if self._stalls >= STALLS_BEFORE_POLLING:
            log.warning("streams of %s bring nothing: reading JSON pages", self.service_sid)
            self._transport = "poll"

    async def _retry(self, error: PresenceUnavailable | None) -> None:
        """Waits before trying again: longer after each failure in a row, never in step with
        every other client of a replica that came back (jitter)."""
        if error is not None:
            log.warning("presence view of %s: %s", self.service_sid, error)
        delay = self._backoff
        if error is not None and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    # -- the snapshot, changes and resets --------------------------------------------------

    async def _snapshot(self) -> None:
        api = self._require_api()
        if self._identities is None:
            versions: dict[str, int] = {}
            feed_cursor = None
            page_cursor = None
            while True:
                page = await api.listing_page(page_cursor)
                # The first page's: the listing plus every change after it is the state.
                feed_cursor = feed_cursor or page.feed_cursor
                versions.update(page.versions)
                page_cursor = page.next_cursor
                if page_cursor is None:
                    break
            online: Iterable[str] = versions
        else:
            # Taken before the lookup: a change the lookup misses comes after it on the feed.
            feed_cursor = await api.feed_cursor()
            found = await api.lookup(self._identities)
            versions = {item.identity: item.version for item in found if item.version}
            online = [item.identity for item in found if item.online]
        moved = self._held.replace(versions, online)
        self._cursor = feed_cursor
        self._backoff = FIRST_BACKOFF_SECONDS
        if self._resync:
            self._resync = False
            for identity, now_online, version in moved:
                await self._deliver(
                    Change(self.service_sid, identity, now_online, version, None, None, None,
                           None, resync=True)
                )  # fmt: skip

    async def _reset(self, reason: str) -> None:
        """Forgets the cursor: the next snapshot replaces what is held, and its changes are
        delivered as a resync. What is held stays readable meanwhile."""
        log.warning("presence view of %s: reset (%s)", self.service_sid, reason)
        self._cursor = None
        self._resync = True
        await _call(self._on_reset, reason)

    async def _take(self, change: Change) -> None:
        if self._held.take(change.identity, change.version, change.online):
            await self._deliver(change)

    async def _deliver(self, change: Change) -> None:
        for iterator in list(self._iterators):
            iterator.put(change)
        await _call(self._on_change, change)


async def _call(hook: Callable[[_T], Awaitable[None] | None] | None, value: _T) -> None:
    """Calls a hook, awaiting it if it is a coroutine; what it raises is logged, not let into
    the view (which would stop following)."""
    if hook is None:
        return
    try:
        result = hook(value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("a presence view hook raised")
