"""``GET``/``POST /v1/services/{sid}/changes``: the change feed, as Server-Sent Events or as
JSON pages (with long-poll).

A client resumes from a cursor (``since``, or ``Last-Event-ID`` for a stream) and receives
every change of the service after it, each once, each identity's in version order; when that
is impossible the reply says ``reset`` (docs/changes.md, "Following changes"). A stream first
reads what it missed straight from Redis, then takes the changes the process's reader of the
service hands it (``presence.feed.hub``), skipping any it already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from presence.events import name_problem
from presence.feed.cursor import FeedCursor, InvalidFeedCursor
from presence.feed.entries import FeedRead
from presence.feed.hub import Closed, Delivery, FeedHub, Reset, Subscriber, TooManyStreams
from presence.metrics import Metrics
from presence.model import StoreUnavailable
from presence.store.base import PresenceStore
from presence.web import openapi
from presence.web.errors import BadRequest, json_error
from presence.web.queries import service_sid
from presence.web.replies import MAX_LOOKUP

log = logging.getLogger("presence.feed")

EVENT_STREAM = "text/event-stream"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 30.0
MAX_FILTER = MAX_LOOKUP
MAX_FILTER_BYTES = 8 * 1024 * 1024
HEARTBEAT_SECONDS = 10.0
"""A comment line at least this often keeps proxies from closing an idle stream (the
contract asks for one every 15 s at most); as often, an idle stream's cursor moves on."""
CONNECTION_CHECK_SECONDS = 1.0
"""How soon a stream whose client went away gives its place back."""
SEND_TIMEOUT_SECONDS = 10.0
"""A stream whose client takes no data for this long is cut (it resumes by cursor)."""
CATCH_UP_PAGE = 1000
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""What ends a line in an event stream (aiohttp-sse's LINE_SEP_EXPR)."""
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class _Query:
    service_sid: str
    since: FeedCursor | None
    identities: frozenset[str] | None
    limit: int
    wait: float


def _cursor(text: str | None) -> FeedCursor | None:
    if not text:
        return None
    try:
        return FeedCursor.decode(text)
    except InvalidFeedCursor as error:
        raise BadRequest("invalid_cursor", str(error)) from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest("invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not (raw.isascii() and 0 <= wait <= MAX_WAIT_SECONDS):
        raise BadRequest(
            "invalid_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
        )
    return wait


def _names(names: list[Any], where: str) -> frozenset[str]:
    if len(names) > MAX_FILTER:
        raise BadRequest("invalid_identity", f"at most {MAX_FILTER} identities can be followed")
    for index, name in enumerate(names):
        problem = name_problem(name)
        if problem:
            raise BadRequest("invalid_identity", f"{where}[{index}] {problem}")
    return frozenset(names)


async def _identities(request: web.Request) -> frozenset[str] | None:
    """The identities to follow: ``identity`` query parameters, and for a POST the JSON
    body's ``identities``; None for all."""
    names: list[Any] = list(request.query.getall("identity", []))
    if request.method == "POST":
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            raise BadRequest("invalid_body", "the body must be JSON") from None
        listed = body.get("identities") if isinstance(body, dict) else None
        if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_FILTER:
            raise BadRequest(
                "invalid_body", f'the body must be {{"identities": [1 to {MAX_FILTER} names]}}'
            )
        return _names(names, "identity") | _names(listed, "identities")
    return _names(names, "identity") if names else None


def _streaming(request: web.Request) -> bool:
    return EVENT_STREAM in request.headers.get("Accept", "")


def _page(read: FeedRead) -> web.Response:
    # The changes are kept as the JSON they were published as: joined, not parsed again.
    body = (
        '{"changes":['
        + ",".join(entry.message for entry in read.entries)
        + '],"cursor":'
        + json.dumps(read.cursor.encode())
        + ',"reset":'
        + ("false" if read.reset is None else 'true,"reason":' + json.dumps(read.reset))
        + "}"
    )
    return web.Response(text=body, content_type="application/json")


def _too_many(error: TooManyStreams) -> web.Response:
    reply = json_error(503, "too_many_streams", f"{error}; retry later")
    reply.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return reply


_FEED_PARAMETERS = (
    openapi.query_parameter(
        "since",
        {"type": "string"},
        "a cursor (a page's `cursor`, an event's `id`, a listing's `feed_cursor`); absent: from "
        "now. A stream's `Last-Event-ID` overrides it",
    ),
    openapi.query_parameter(
        "identity",
        {"type": "array", "items": openapi.ref("Identity"), "maxItems": MAX_FILTER},
        f"only the changes of these identities (repeat it: `identity=a&identity=b`; at most "
        f"{MAX_FILTER})",
    )
    | {"style": "form", "explode": True},
    openapi.query_parameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "JSON only: changes per page at most",
    ),
    openapi.query_parameter(
        "wait",
        {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS, "default": 0},
        "JSON only: seconds to wait for a change when there is none yet (long-poll)",
    ),
    openapi.header_parameter(
        "Last-Event-ID",
        "a stream's last event `id`, sent by an EventSource client when it reconnects",
    ),
)

_FEED_REPLY = {
    "description": "`Accept: text/event-stream`: a stream of `event: change` (its `id:` a "
    'cursor, its `data:` the change) and `event: reset` (`data: {"reason": ...}`, then from '
    f"now), with a comment line at least every {HEARTBEAT_SECONDS:g} s; otherwise a JSON page",
    "content": {
        EVENT_STREAM: {"schema": {"type": "string"}},
        **openapi.json_content(openapi.ref("ChangesPage")),
    },
}

_FEED_UNAVAILABLE = openapi.error(
    "Redis cannot be reached (`store_unavailable`), or `PRESENCE_MAX_STREAMS` streams are open "
    "in this process (`too_many_streams`, with `Retry-After`)",
    "store_unavailable",
    "too_many_streams",
    headers={
        "Retry-After": {
            "description": "with `too_many_streams`: seconds to wait before trying again",
            "schema": {"type": "integer", "example": RETRY_AFTER_SECONDS},
        }
    },
)


def _feed_operation(
    operation_id: str, summary: str, *codes: str, request_body: openapi.Schema | None = None
) -> openapi.Operation:
    """``GET`` or ``POST`` of the change feed: the same parameters, replies and errors."""
    return openapi.query_operation(
        operation_id,
        summary,
        _FEED_REPLY,
        *("invalid_service_sid", "invalid_cursor", "invalid_identity", "invalid_limit", *codes),
        description=(
            "Every change of the service after `since`, each once, each identity's in version "
            'order; `reset` when that is impossible (docs/changes.md, "Following changes").'
        ),
        parameters=_FEED_PARAMETERS,
        request_body=request_body,
        more_responses={"503": _FEED_UNAVAILABLE},
    )


class ChangesApi:
    """The change feed over HTTP, read from ``store`` and followed through ``hub``."""

    def __init__(self, store: PresenceStore, hub: FeedHub, metrics: Metrics) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        path = "/v1/services/{service_sid}/changes"
        return [web.get(path, self.changes), web.post(path, self.changes)]

    @openapi.documented(
        get=_feed_operation("followChanges", "The change feed", "invalid_wait"),
        post=_feed_operation(
            "followChangesOf",
            f"The change feed of up to {MAX_FILTER} identities",
            "invalid_wait",
            "invalid_body",
            request_body={
                "required": True,
                "content": openapi.json_content(openapi.ref("FeedFilter")),
            },
        ),
    )
    async def changes(self, request: web.Request) -> web.StreamResponse:
        sid = service_sid(request)
        streaming = _streaming(request)
        since = _cursor(request.headers.get("Last-Event-ID") if streaming else None)
        query = _Query(
            sid,
            since or _cursor(request.query.get("since")),
            await _identities(request),
            _limit(request),
            _wait(request),
        )
        try:
            if streaming:
                return await self._stream(request, query)
            return await self._poll(query)
        except TooManyStreams as error:
            return _too_many(error)

    # -- JSON pages ----------------------------------------------------------------------------

    async def _read(self, query: _Query, after: FeedCursor | None) -> FeedRead:
        # Every read checks its cursor, the ones after a wait included: a Redis that lost
        # what the cursor saw while the poll waited is a reset, not an empty page.
        return await self.store.read_feed(
            query.service_sid, after, limit=query.limit, identities=query.identities
        )

    async def _poll(self, query: _Query) -> web.Response:
        read = await self._read(query, query.since)
        if read.entries or read.reset or query.wait == 0:
            return self._sent(read)
        async with self.hub.subscription(query.service_sid, query.identities) as subscriber:
            # A change stored after the read above but before this subscriber joined is not
            # queued for it: read once more first, then wait for one that is.
            read = await self._read(query, read.cursor)
            if not read.entries and not read.reset:
                await subscriber.get(query.wait)
                read = await self._read(query, read.cursor)
        return self._sent(read)

    def _sent(self, read: FeedRead) -> web.Response:
        self.metrics.feed_changes_sent.inc(len(read.entries))
        if read.reset is not None:
            self.metrics.feed_resets.labels(read.reset).inc()
        return _page(read)

    # -- Server-Sent Events --------------------------------------------------------------------

    async def _stream(self, request: web.Request, query: _Query) -> web.StreamResponse:
        # Subscribed before the reply starts: over the bound, a 503 can still be sent.
        async with self.hub.subscription(query.service_sid, query.identities) as subscriber:
            stream = EventSourceResponse(
                ping_interval=HEARTBEAT_SECONDS,
                send_timeout=SEND_TIMEOUT_SECONDS,
                allow_all_methods=True,  # POST carries a long filter in its body
            )
            await stream.prepare(request)
            sender = _Sender(stream, request, self.metrics)
            try:
                await sender.opened()
                position = await self._catch_up(query, subscriber.joined_at, sender)
                await self._follow(request, query, subscriber, position, sender)
            except (ConnectionResetError, TimeoutError, RuntimeError):
                pass  # the client went away or stopped reading: it resumes by cursor
            # The reply has begun: no error reply can follow it, only the stream's end, from
            # which the client resumes by cursor like after any lost connection.
            except StoreUnavailable as error:
                self.metrics.redis_error("feed")
                log.warning("stream of %s ended: store unavailable (%s)", query.service_sid, error)
            except Exception:
                log.exception("stream of %s ended: unexpected error", query.service_sid)
            finally:
                with contextlib.suppress(Exception):
                    stream.stop_streaming()
        return stream

    async def _catch_up(self, query: _Query, joined: FeedCursor, sender: _Sender) -> FeedCursor:
        """Sends what the client missed, read from Redis, up to where the reader of this
        process stood when it joined (or further); returns where the client is."""
        if query.since is None:
            return joined
        position = query.since
        while True:
            read = await self.store.read_feed(
                query.service_sid, position, limit=CATCH_UP_PAGE, identities=query.identities
            )
            if read.reset is not None:
                self.metrics.feed_resets.labels(read.reset).inc()
                await sender.reset(read.reset, read.cursor)
                return read.cursor
            await sender.changes([(entry.message, cursor) for entry, cursor in read.with_cursors()])
            if read.cursor.position == position.position or (
                read.cursor.position >= joined.position and not read.more
            ):
                return read.cursor
            position = read.cursor

    async def _follow(
        self,
        request: web.Request,
        query: _Query,
        subscriber: Subscriber,
        position: FeedCursor,
        sender: _Sender,
    ) -> None:
        """Sends what the reader of this process hands the client, until the stream ends."""
        moved = time.monotonic()
        # The client may have been sent changes the reader has not read yet (its catch-up
        # read further, or it resumed from a cursor ahead of the reader). Should Redis lose
        # those before the reader gets there, the reader would see no loss of its own: so
        # once the reader passes the client's cursor, that cursor is checked against Redis.
        ahead = position.position > subscriber.joined_at.position
        # aiohttp does not cancel a handler whose client left: its transport is gone.
        while sender.connected and request.transport is not None:
            delivery = await subscriber.get(CONNECTION_CHECK_SECONDS)
            if ahead and isinstance(delivery, Reset | Closed):
                ahead = False  # the reader's own reset (or the end) says it all
            elif ahead and _passed(delivery, subscriber, position):
                ahead = False
                checked = await self.store.read_feed(
                    query.service_sid, position, limit=1, identities=query.identities
                )
                if checked.reset is not None:
                    self.metrics.feed_resets.labels(checked.reset).inc()
                    await sender.reset(checked.reset, checked.cursor)
                    position = checked.cursor
            if delivery is None:
                # Nothing for this client: its cursor still moves on with the reader's, so a
                # filtered stream that resumes after hours does not start from hours ago.
                read_to = subscriber.read_to
                if (
                    time.monotonic() - moved >= HEARTBEAT_SECONDS
                    and not subscriber.pending
                    and read_to.position > position.position
                ):
                    await sender.position(read_to)
                    position, moved = read_to, time.monotonic()
                continue
            if isinstance(delivery, Closed):
                return
            if isinstance(delivery, Reset):
                await sender.reset(delivery.reason, delivery.cursor)
                position = delivery.cursor
                continue
            # This change and those queued behind it, in one write: a client that follows
            # many identities gets a reader's whole batch at once, not a write per change.
            batch: list[tuple[str, FeedCursor]] = []
            pending = subscriber.pending
            entry, cursor = delivery
            while True:
                if cursor.position > position.position:  # not already sent while catching up
                    batch.append((entry.message, cursor))
                    position = cursor
                if ahead or not pending:
                    break
                following = pending[0]
                if not isinstance(following, tuple):
                    break  # a reset or the end: the loop's own turn
                pending.popleft()
                entry, cursor = following
            await sender.changes(batch)


def _event(event: str, id: str, data: str) -> str:
    """An event as aiohttp-sse frames it: each line of ``data`` a field of its own."""
    if "\n" in data or "\r" in data:
        data = "\r\ndata: ".join(_LINE_BREAK.split(data))
    return f"id: {id}\r\nevent: {event}\r\ndata: {data}\r\n\r\n"


def _passed(delivery: Delivery | None, subscriber: Subscriber, position: FeedCursor) -> bool:
    """Whether the reader has read past ``position``: with this change, or (none for this
    client) by where it read to."""
    if isinstance(delivery, tuple):
        return delivery[1].position > position.position
    return subscriber.read_to.position > position.position


class _Sender:
    """Writes the events of one stream, framed as aiohttp-sse's ``send`` frames them (the
    same bytes), several to a write when several are waiting."""

    def __init__(self, stream: EventSourceResponse, request: web.Request, metrics: Metrics) -> None:
        self.stream = stream
        self.request = request
        self.metrics = metrics

    @property
    def connected(self) -> bool:
        return self.stream.is_connected()

    async def changes(self, changes: Sequence[tuple[str, FeedCursor]]) -> None:
        if not changes:
            return
        await self._send(
            "".join([_event("change", cursor.encode(), message) for message, cursor in changes])
        )
        self.metrics.feed_changes_sent.inc(len(changes))

    async def reset(self, reason: str, cursor: FeedCursor) -> None:
        await self._send(_event("reset", cursor.encode(), json.dumps({"reason": reason})))

    async def opened(self) -> None:
        # aiohttp holds a reply's headers back until its first bytes: without these, a client
        # would learn the stream is open only at the first change or heartbeat (10 s).
        await self.stream.write(b": open\r\n\r\n")

    async def position(self, cursor: FeedCursor) -> None:
        # An event with an ID and no data moves a client's Last-Event-ID without an event.
        await self.stream.write(f"id: {cursor.encode()}\r\n\r\n".encode())

    async def _send(self, events: str) -> None:
        """What aiohttp-sse's ``send`` does after framing: a write that a client not taking
        data for SEND_TIMEOUT_SECONDS ends, the connection then aborted."""
        stream = self.stream
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await stream.write(events.encode())
        except ConnectionResetError:
            stream.stop_streaming()
            raise
        except TimeoutError:
            stream.stop_streaming()
            # A stalled client never drains the buffer, so a graceful close would wait on it.
            if (transport := self.request.transport) is not None:
                transport.abort()
            raise
