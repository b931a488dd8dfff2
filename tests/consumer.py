"""A consumer of a service's presence that does exactly what docs tell one to do: read every page
of ``/online?versions=true`` keeping the listing's ``feed_cursor``, follow the change feed from
it, apply a change only when its version is above the one held, and on a reset forget everything
held, read the listing again and follow on from its ``feed_cursor``. It reads the feed one of
four ways: an SSE stream kept open, SSE resumed with ``Last-Event-ID`` each time it is asked to
catch up, a JSON long-poll always in flight, or JSON pages resumed with ``since``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from tests.support import wait_until

Mode = Literal["stream", "stream-resumed", "poll-waiting", "poll-since"]
MODES: tuple[Mode, ...] = ("stream", "stream-resumed", "poll-waiting", "poll-since")

IDLE_SECONDS = 0.5
"""A resumed stream or a run of pages that brings nothing new for this long is caught up."""


@dataclass
class Consumer:
    base_url: str
    service_sid: str
    token: str | None
    mode: Mode
    held: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """identity -> (version, online) of what the consumer holds."""
    cursor: str = ""
    resets: list[str] = field(default_factory=list)
    """The reason of each reset received."""
    repeats: list[tuple[str, int]] = field(default_factory=list)
    """Changes received at or below a version held: (identity, version)."""
    applied: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Connections the service closed or could not answer (it resumes by cursor)."""
    _session: aiohttp.ClientSession | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def online(self) -> set[str]:
        return {name for name, (_, online) in self.held.items() if online}

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def url(self, path: str) -> str:
        return f"{self.base_url}/v1/services/{self.service_sid}/{path}"

    async def __aenter__(self) -> Consumer:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        await self.snapshot()
        if self.mode in ("stream", "poll-waiting"):
            self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    # -- what the docs say ------------------------------------------------------------------

    async def snapshot(self) -> None:
        """Every page of the listing, with versions; the feed is followed from its cursor."""
        held: dict[str, tuple[int, bool]] = {}
        cursor: str | None = None
        feed_cursor = ""
        while True:
            params = {"versions": "true", "limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = await self._get_json("online", params)
            feed_cursor = feed_cursor or page["feed_cursor"]
            for listed in page["identities"]:
                held[listed["identity"]] = (listed["version"], True)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.held, self.cursor = held, feed_cursor

    def apply(self, change: dict[str, Any]) -> None:
        name, version = change["identity"], change["version"]
        if version <= self.held.get(name, (0, False))[0]:
            self.repeats.append((name, version))
            return
        self.held[name] = (version, change["online"])
        self.applied.append((name, version))

    async def reset(self, reason: str) -> None:
        self.resets.append(reason)
        await self.snapshot()

    # -- reading the feed -------------------------------------------------------------------

    async def catch_up(self) -> None:
        """For the modes that read only when asked: reads until nothing new comes."""
        if self.mode == "stream-resumed":
            await self._stream(until_idle=True)
        elif self.mode == "poll-since":
            while await self._poll(wait=0):
                pass

    async def until(self, online: set[str], within: float = 20.0) -> None:
        """Until the consumer holds exactly ``online`` online (catching up as it must)."""

        async def holds() -> bool:
            await self.catch_up()
            return self.online == online

        await wait_until(holds, within, f"{self.mode} to hold {sorted(online)}")

    async def _follow(self) -> None:
        while True:
            try:
                if self.mode == "stream":
                    await self._stream(until_idle=False)
                else:
                    await self._poll(wait=5)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                self.errors.append(repr(error))
                await asyncio.sleep(0.1)

    async def _poll(self, wait: float) -> bool:
        """One JSON read; True when it brought a change or a reset."""
        params = {"since": self.cursor, "limit": "1000", "wait": str(wait)}
        page = await self._get_json("changes", params)
        if page["reset"]:
            await self.reset(page["reason"])
            return True
        for change in page["changes"]:
            self.apply(change)
        self.cursor = page["cursor"]
        return bool(page["changes"])

    async def _stream(self, *, until_idle: bool) -> None:
        """One stream from the cursor (``Last-Event-ID``), until it ends, or, ``until_idle``,
        until it is idle; a reset ends it: the listing is read again and the next stream
        starts from its cursor."""
        headers = {**self.headers, "Accept": "text/event-stream", "Last-Event-ID": self.cursor}
        async with self.session.get(self.url("changes"), headers=headers) as response:
            if response.status != 200:
                self.errors.append(f"{response.status} {await response.text()}")
                await asyncio.sleep(0.1)
                return
            events = _events(response)
            while True:
                try:
                    if until_idle:
                        event = await asyncio.wait_for(anext(events), IDLE_SECONDS)
                    else:
                        event = await anext(events)
                except (StopAsyncIteration, TimeoutError):
                    return
                kind, data, event_id = event
                if kind == "reset":
                    await self.reset(json.loads(data)["reason"])
                    return
                if kind == "change":
                    self.apply(json.loads(data))
                if event_id is not None:
                    self.cursor = event_id

    async def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        while True:
            async with self.session.get(self.url(path), params=params, headers=self.headers) as r:
                if r.status == 503:  # Redis is away: as a client would, again a moment later
                    self.errors.append(f"503 {await r.text()}")
                    await asyncio.sleep(0.1)
                    continue
                assert r.status == 200, await r.text()
                body: dict[str, Any] = await r.json()
                return body


async def _events(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[str | None, str, str | None]]:
    """(event, data, id) of each event of a stream, and (None, "", id) for an id alone."""
    fields: dict[str, list[str]] = {}
    with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionResetError):
        async for raw in response.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
                continue
            event_id = fields.get("id", [None])[-1]
            if "data" in fields:
                yield fields.get("event", ["message"])[-1], "\n".join(fields["data"]), event_id
            elif event_id is not None:
                yield None, "", event_id
            fields = {}
