"""Running a reconnect storm against a deployment, and counting its flickers.

1. Every identity connects, as fast as the connections allow; the query API must then say
   that all are online (``POST .../lookup``), and their versions are noted.
2. A listing's ``feed_cursor`` is taken and the change feed followed from it, so that no
   change made after that point can be missed.
3. The storm goes through the delivery queue, on time or late, never dropped.
4. The feed is followed for the grace and a margin after the last reply: an offline that the
   service held past a reconnect it had not yet stored is published by then.
5. Every identity must be online again, and each identity's version must have moved by
   exactly the changes the feed carried: a second count, independent of the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

from presence.simulate.delivery import Delivered, Timed, deliver, signed
from presence.simulate.flickers import FeedCount
from presence.simulate.report import Progress
from presence.simulate.send import REQUEST_TIMEOUT_SECONDS, SendOptions
from presence.simulate.storm import StormConfig, StormWebhook, plan_storm
from presence.simulate.storm_report import Identity, StormSummary
from presence.waits import set_within

ONLINE_WITHIN_SECONDS = 60.0
"""How long the identities may take to be online after their connects were answered (a 200
means stored, so at once, unless the deployment's replicas read a lagging Redis)."""
SETTLE_MARGIN_SECONDS = 2.0
"""Beyond the grace: the sweeper's own delay in firing a deadline, and the feed's in
handing the change on."""
FEED_OPEN_WITHIN_SECONDS = 10.0
LOOKUP_CHUNK = 1000
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ApiOptions:
    """Where the service's query API and change feed answer, and their bearer token."""

    url: str
    token: str | None = None


class StormFailed(Exception):
    """The storm could not be run or counted: the message says what."""


async def run_storm(
    config: StormConfig, send: SendOptions, api: ApiOptions, progress: TextIO | None = None
) -> StormSummary:
    """Runs the storm (see the module's docstring) and sums it up."""
    summary = StormSummary(
        url=send.url,
        signed_for=send.sign_url or send.url,
        signed=send.token is not None,
        api_url=api.url,
        config=config,
        connections=send.concurrency,
    )
    auth = {"Authorization": f"Bearer {api.token}"} if api.token else {}
    feed_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    hooks_timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    # Webhooks have a pool of their own, of exactly ``concurrency`` keep-alive connections;
    # the queries and the feed never take one of them.
    connector = aiohttp.TCPConnector(limit=send.concurrency)
    async with (
        aiohttp.ClientSession(headers=auth, timeout=feed_timeout) as queries,
        aiohttp.ClientSession(connector=connector, timeout=hooks_timeout) as hooks,
    ):
        run = _Run(config, send, api, queries, hooks, summary, progress)
        try:
            await run.all()
        except StormFailed as error:
            summary.failure = str(error)
    return summary


class _Run:
    def __init__(
        self,
        config: StormConfig,
        send: SendOptions,
        api: ApiOptions,
        queries: aiohttp.ClientSession,
        hooks: aiohttp.ClientSession,
        summary: StormSummary,
        progress: TextIO | None,
    ) -> None:
        self.config, self.send, self.api = config, send, api
        self.queries, self.hooks = queries, hooks
        self.summary = summary
        self.progress = progress
        self.base = f"{api.url}/v1/services/{config.service}"

    def say(self, message: str) -> None:
        if self.progress is not None:
            print(f"simulate: {message}", file=self.progress, flush=True)

    def signed(self, webhooks: Sequence[StormWebhook]) -> list[Timed]:
        url, token = self.send.sign_url or self.send.url, self.send.token
        return [signed(w.at, w.params, w.headers, url=url, token=token) for w in webhooks]

    async def deliver(self, webhooks: list[Timed]) -> Delivered:
        progress = Progress(self.progress, len(webhooks), None)
        return await deliver(self.hooks, self.send.url, webhooks, self.send.concurrency, progress)

    async def all(self) -> None:
        config, summary = self.config, self.summary
        names = config.names()
        plan = plan_storm(config)
        self.say(f"bringing {config.identities} identities online")
        summary.online_phase = online = await self.deliver(self.signed(plan.connects))
        if online.tally.unexpected:
            raise StormFailed(
                f"{online.tally.unexpected} of the {len(names)} connects were not applied"
            )
        before = await self.until_online(names)
        cursor = await self.feed_cursor()
        feed = summary.feed = FeedCount(self.queries, self.api.url, config.service, cursor)
        following = asyncio.create_task(feed.run())
        try:
            await self.storm(plan.storm, plan.reconnect_of, feed)
        finally:
            following.cancel()
            (ended,) = await asyncio.gather(following, return_exceptions=True)
        if isinstance(ended, Exception):
            raise StormFailed(f"following the change feed failed: {ended!r}")
        after = await self.lookup(names)
        summary.after = after
        summary.unaccounted = [
            name for name in names if after[name].version - before[name] != feed.changed(name)
        ]

    async def storm(
        self, webhooks: list[StormWebhook], reconnect_of: dict[int, int], feed: FeedCount
    ) -> None:
        if not await set_within(feed.open, FEED_OPEN_WITHIN_SECONDS):
            raise StormFailed(
                f"the change feed did not answer within {FEED_OPEN_WITHIN_SECONDS:g} s"
            )
        if feed.refused is not None:
            raise StormFailed(f"the change feed refused: {feed.refused}")
        timed = self.signed(webhooks)
        for disconnect, reconnect in reconnect_of.items():
            timed[disconnect].newer = timed[reconnect]
        self.say(f"all online; the storm: {len(timed)} webhooks")
        self.summary.storm = storm = await self.deliver(timed)
        settle = self.config.grace + SETTLE_MARGIN_SECONDS
        self.say(f"storm sent; following the change feed for {settle:g} s more")
        await asyncio.sleep(max(0.0, storm.last + settle - time.monotonic()))

    async def until_online(self, names: list[str]) -> dict[str, int]:
        """Waits until the service says every identity is online; their versions."""
        deadline = time.monotonic() + ONLINE_WITHIN_SECONDS
        while True:
            found = await self.lookup(names)
            missing = [name for name in names if not found[name].settled_online]
            if not missing:
                return {name: found[name].version for name in names}
            if time.monotonic() > deadline:
                self.summary.after = found
                raise StormFailed(
                    f"{len(missing)} identities were not online {ONLINE_WITHIN_SECONDS:g} s"
                    " after their connects were applied"
                )
            await asyncio.sleep(POLL_SECONDS)

    async def lookup(self, names: list[str]) -> dict[str, Identity]:
        found: dict[str, Identity] = {}
        for start in range(0, len(names), LOOKUP_CHUNK):
            body = {"identities": names[start : start + LOOKUP_CHUNK]}
            reply = await self.query("POST", "/lookup", json=body)
            for item in reply["identities"]:
                found[item["identity"]] = Identity(
                    bool(item["online"]), bool(item["pending_offline"]), int(item["version"])
                )
        return found

    async def feed_cursor(self) -> str:
        """Where the change feed stands now (a listing's ``feed_cursor``)."""
        reply = await self.query("GET", "/online", params={"limit": "1"})
        cursor: str = reply["feed_cursor"]
        return cursor

    async def query(self, method: str, path: str, **request: Any) -> Any:
        try:
            async with self.queries.request(method, self.base + path, **request) as response:
                if response.status != 200:
                    text = (await response.text()).strip()
                    raise StormFailed(f"{method} {self.base}{path}: {response.status} {text}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise StormFailed(f"{method} {self.base}{path}: {error!r}") from None
