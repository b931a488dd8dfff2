"""Who the service announced offline and online during a storm, as its change feed carried it.

``FeedCount`` follows ``GET /v1/services/{sid}/changes`` as Server-Sent Events from a cursor
taken before the storm (so that nothing in between is missed), reconnecting from its last
cursor when the stream is lost, and counts each identity's announcements.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import aiohttp

from presence.watch import server_sent_events

log = logging.getLogger("presence.simulate")

RECONNECT_SECONDS = 0.2


class FeedCount:
    """Counts the changes of one service's feed from ``since``, until cancelled."""

    def __init__(
        self, session: aiohttp.ClientSession, api_url: str, service_sid: str, since: str
    ) -> None:
        self.session = session
        self.url = f"{api_url}/v1/services/{service_sid}/changes"
        self.service_sid = service_sid
        self.cursor = since
        self.offline: Counter[str] = Counter()
        """Identities announced offline, and how many times."""
        self.online: Counter[str] = Counter()
        """Identities announced online, and how many times."""
        self.changes = 0
        self.resets: list[str] = []
        """The reason of each ``reset``: changes may have been missed."""
        self.reconnects = 0
        self.open = asyncio.Event()
        """Set once the stream has been answered 200 (or refused: see ``refused``)."""
        self.refused: str | None = None

    def changed(self, identity: str) -> int:
        """How many changes of ``identity`` were announced."""
        return self.offline[identity] + self.online[identity]

    async def run(self) -> None:
        """Follows the feed until cancelled; returns early only if the service refuses it."""
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": self.cursor}
            try:
                async with self.session.get(self.url, headers=headers) as response:
                    if response.status != 200:
                        text = await response.text()
                        if response.status in (400, 401, 403, 404):
                            self.refused = f"{response.status} {text.strip()}"
                            self.open.set()
                            return
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
                    self.open.set()
                    async for event in server_sent_events(response):
                        self.cursor = event.id or self.cursor
                        if event.data:
                            self._count(event.event, "\n".join(event.data))
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.warning("lost the change feed (%s); resuming", error or type(error))
            # The stream ended or broke: resume from the last cursor, which loses nothing.
            self.reconnects += 1
            await asyncio.sleep(RECONNECT_SECONDS)

    def _count(self, kind: str, data: str) -> None:
        payload = json.loads(data)
        if kind == "reset":
            self.resets.append(str(payload.get("reason")))
            return
        if kind != "change" or payload.get("service_sid") != self.service_sid:
            return
        self.changes += 1
        identity = str(payload.get("identity"))
        if payload.get("online"):
            self.online[identity] += 1
        else:
            self.offline[identity] += 1
