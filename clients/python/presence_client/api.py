"""The service's HTTP API as the view uses it: the listing, lookups, and the change feed as a
stream of Server-Sent Events or as JSON pages (long-poll). Every failure comes out as a
``PresenceRefused`` (asking again cannot help), a ``PresenceUnavailable`` (it can) or an
``InvalidCursor`` (only a new snapshot can)."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from presence_client.model import Change, Identity, PresenceRefused, PresenceUnavailable
from presence_client.sse import EventParser, ServerSentEvent

EVENT_STREAM = "text/event-stream"
PAGE_SIZE = 1000
"""The largest page of ``/online`` and of the feed, and the most names a lookup or a feed
filter takes."""
QUERY_FILTER_MAX = 1500
"""A filter whose query string would be longer than this many characters is POSTed."""
REQUEST_SECONDS = 30.0


class InvalidCursor(Exception):
    """The service does not take the cursor (``400 invalid_cursor``): only a new snapshot
    helps."""


@dataclass(frozen=True, slots=True)
class ListingPage:
    """A page of ``/online?versions=true``."""

    versions: dict[str, int]
    next_cursor: str | None
    feed_cursor: str


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A JSON page of the change feed: its changes, the cursor after them, or a reset."""

    changes: list[Change]
    cursor: str
    reset: str | None


TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, ValueError)
"""What a lost connection, a silent stream or a reply that is not what the API sends raise:
all worth trying again (a proxy's error page, say, is no JSON)."""


class FeedApi:
    """Requests about one service, with the API token, on ``session``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        service_sid: str,
        token: str | None,
        identities: Sequence[str] | None,
        silence_seconds: float,
    ) -> None:
        self.session = session
        self.base = f"{base_url.rstrip('/')}/v1/services/{quote(service_sid, safe='')}"
        self.service_sid = service_sid
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.identities = identities
        self.silence_seconds = silence_seconds
        self.stream_stalled = False
        """Whether the last stream was answered, or at least connected, and then brought not
        one byte before the silence ran out, or was no stream: how a proxy that holds streams
        back, or turns them into something else, shows."""

    # -- the snapshot ----------------------------------------------------------------------

    async def listing_page(self, cursor: str | None) -> ListingPage:
        params = {"versions": "true", "limit": str(PAGE_SIZE)}
        if cursor:
            params["cursor"] = cursor
        page = await self._json("GET", "/online", params=params)
        versions = {str(item["identity"]): int(item["version"]) for item in page["identities"]}
        return ListingPage(versions, page["next_cursor"], str(page["feed_cursor"]))

    async def feed_cursor(self) -> str:
        """A listing's ``feed_cursor``: the feed's present, checked as a snapshot's cursor
        (a restart that loses what a lookup after it saw is a reset)."""
        page = await self._json("GET", "/online", params={"limit": "1"})
        return str(page["feed_cursor"])

    async def lookup(self, identities: Iterable[str]) -> list[Identity]:
        names = list(identities)
        found: list[Identity] = []
        for start in range(0, len(names), PAGE_SIZE):
            body = {"identities": names[start : start + PAGE_SIZE]}
            reply = await self._json("POST", "/lookup", json=body)
            found += [Identity.looked_up(item) for item in reply["identities"]]
        return found

    # -- the change feed -------------------------------------------------------------------

    def _filter(self) -> tuple[str, list[tuple[str, str]], dict[str, Any] | None]:
        """The method, query and body that ask for the view's identities only."""
        if self.identities is None:
            return "GET", [], None
        query = [("identity", name) for name in self.identities]
        if len(urlencode(query)) <= QUERY_FILTER_MAX:
            return "GET", query, None
        return "POST", [], {"identities": list(self.identities)}

    async def poll(self, cursor: str, wait: float) -> FeedPage:
        """One JSON page from ``cursor``, waiting up to ``wait`` seconds for a change."""
        method, query, body = self._filter()
        params = [*query, ("since", cursor), ("limit", str(PAGE_SIZE)), ("wait", f"{wait:g}")]
        timeout = aiohttp.ClientTimeout(total=wait + self.silence_seconds, sock_connect=10)
        page = await self._json(method, "/changes", params=params, json=body, timeout=timeout)
        if page["reset"]:
            return FeedPage([], str(page["cursor"]), str(page.get("reason")))
        changes = [Change.published(item, None) for item in page["changes"]]
        return FeedPage(changes, str(page["cursor"]), None)

    async def events(self, cursor: str) -> AsyncGenerator[ServerSentEvent, None]:
        """The stream from ``cursor`` (``Last-Event-ID``), event by event, until it ends."""
        method, query, body = self._filter()
        headers = {**self.auth, "Accept": EVENT_STREAM, "Last-Event-ID": cursor}
        # Heartbeats come every 10 s: silence for longer is a connection lost.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.silence_seconds)
        self.stream_stalled = False
        received = False
        try:
            async with self.session.request(
                method, self.base + "/changes", params=query, json=body, headers=headers,
                timeout=timeout,
            ) as response:  # fmt: skip
                await _check(response)
                if response.content_type != EVENT_STREAM:
                    self.stream_stalled = True
                    raise PresenceUnavailable(f"not a stream: {response.content_type}")
                parser = EventParser()
                decoder = codecs.getincrementaldecoder("utf-8")()
                async for chunk in response.content.iter_any():
                    received = True
                    for event in parser.feed(decoder.decode(chunk)):
                        yield event
        except TRANSPORT_ERRORS as error:
            # A host that cannot be reached is no proxy holding streams back.
            connected = not isinstance(error, aiohttp.ConnectionTimeoutError)
            self.stream_stalled = isinstance(error, TimeoutError) and connected and not received
            raise PresenceUnavailable(f"the stream was lost: {error!r}") from error

    # -- requests --------------------------------------------------------------------------

    async def _json(self, method: str, path: str, **request: Any) -> Any:
        request.setdefault("timeout", aiohttp.ClientTimeout(total=REQUEST_SECONDS))
        try:
            async with self.session.request(
                method, self.base + path, headers=self.auth, **request
            ) as response:
                await _check(response)
                return await response.json(content_type=None)
        except TRANSPORT_ERRORS as error:
            raise PresenceUnavailable(f"{method} {path}: {error!r}") from error


async def _check(response: aiohttp.ClientResponse) -> None:
    """Raises unless the reply is a 200."""
    if response.status == 200:
        return
    text = await response.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    code = body.get("error", "") if isinstance(body, dict) else ""
    message = body.get("message", "") if isinstance(body, dict) else text[:200]
    if response.status == 400 and code == "invalid_cursor":
        raise InvalidCursor(message)
    if response.status in (400, 401, 403, 404):
        raise PresenceRefused(response.status, str(code), str(message))
    retry_after = response.headers.get("Retry-After", "")
    raise PresenceUnavailable(
        f"{response.status} {code or text[:200]}",
        retry_after=float(retry_after) if retry_after.isdigit() else None,
    )
