"""Sending: signed as Twilio signs, over a connection pool, paced, one identity at a time.

Each identity's webhooks go out in the order the generator gives them, the next only once the
previous is answered (as Twilio's EventIds assume), while up to ``concurrency`` identities are
in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from presence.simulate.report import Progress, Summary, Tally
from presence.simulate.traffic import Traffic, Webhook
from presence.twilio import USER_AGENT, WEBHOOK_TIMEOUT_SECONDS
from presence.twilio.signing import form_headers

DEFAULT_URL = "http://127.0.0.1:8080/webhooks/sync"
DEFAULT_CONCURRENCY = 32
REQUEST_TIMEOUT_SECONDS = WEBHOOK_TIMEOUT_SECONDS


@dataclass(frozen=True)
class SendOptions:
    url: str = DEFAULT_URL
    """Where the webhooks are sent."""
    token: str | None = None
    """None: unsigned."""
    sign_url: str | None = None
    """The URL the webhooks are signed for, as Twilio signs for the Sync service's webhook URL
    (the service checks it as ``PRESENCE_WEBHOOK_URL``); None: ``url`` itself."""
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None
    """Webhooks per second, evenly spaced; None: as fast as possible."""
    duration: float | None = None
    """Stop generating after this many seconds (then send what was held back)."""


CATCH_UP_SECONDS = 0.1
"""How far behind its schedule the pacer may catch up: slots missed by a slow reply or a busy
event loop are made up for, but never more than this much of them, so there is no burst."""


class Pacer:
    """Evenly spaced send times, ``1/rate`` apart."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.next: float | None = None

    async def wait(self) -> None:
        now = time.monotonic()
        slot = now if self.next is None else max(self.next, now - CATCH_UP_SECONDS)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


class _Lanes:
    """A queue per identity; an identity is handed to one worker at a time."""

    def __init__(self, limit: int) -> None:
        self.queues: dict[str, deque[Webhook]] = {}
        self.ready: asyncio.Queue[str | None] = asyncio.Queue()
        self.outstanding = 0
        self.limit = limit
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()
        self.idle.set()

    async def put(self, webhook: Webhook) -> None:
        await self.room.wait()
        queue = self.queues.get(webhook.identity)
        if queue is None:
            queue = self.queues[webhook.identity] = deque()
            self.ready.put_nowait(webhook.identity)
        queue.append(webhook)
        self.outstanding += 1
        self.idle.clear()
        if self.outstanding >= self.limit:
            self.room.clear()

    def done(self, identity: str) -> None:
        """The head of ``identity``'s queue was answered: its next one may go."""
        queue = self.queues[identity]
        queue.popleft()
        if queue:
            self.ready.put_nowait(identity)
        else:
            del self.queues[identity]
        self.outstanding -= 1
        if self.outstanding < self.limit:
            self.room.set()
        if not self.outstanding:
            self.idle.set()


class Sender:
    def __init__(self, options: SendOptions, tally: Tally) -> None:
        self.options = options
        self.tally = tally
        self.pacer = Pacer(options.rate) if options.rate else None

    async def run(self, traffic: Traffic) -> None:
        options = self.options
        lanes = _Lanes(max(64, 4 * options.concurrency))
        connector = aiohttp.TCPConnector(limit=options.concurrency)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self._work(session, lanes)) for _ in range(options.concurrency)
            ]
            try:
                await self._feed(traffic, lanes)
                await lanes.idle.wait()
            finally:
                for _ in workers:
                    lanes.ready.put_nowait(None)
                await asyncio.gather(*workers, return_exceptions=True)

    async def _feed(self, traffic: Traffic, lanes: _Lanes) -> None:
        deadline = None
        if self.options.duration is not None:
            deadline = time.monotonic() + self.options.duration
        for count, webhook in enumerate(traffic):
            await lanes.put(webhook)
            if count % 64 == 0:
                await asyncio.sleep(0)  # let the workers start while the lanes fill
            if deadline is not None and time.monotonic() >= deadline:
                break
        rest: Iterable[Webhook] = traffic.release_held() if deadline is not None else ()
        for webhook in rest:
            await lanes.put(webhook)

    async def _work(self, session: aiohttp.ClientSession, lanes: _Lanes) -> None:
        while (identity := await lanes.ready.get()) is not None:
            webhook = lanes.queues[identity][0]
            if self.pacer is not None:
                await self.pacer.wait()
            try:
                await self._send(session, webhook)
            finally:
                lanes.done(identity)

    async def _send(self, session: aiohttp.ClientSession, webhook: Webhook) -> None:
        url, token, tally = self.options.url, self.options.token, self.tally
        headers = {
            **form_headers(token, self.options.sign_url or url, webhook.params),
            "User-Agent": USER_AGENT,
            **webhook.headers,
        }
        status = await post_counted(session, url, urlencode(webhook.params), headers, tally)
        # A 200 with another status than the rules predict is unexpected too.
        if status is not None and status != webhook.expected:
            tally.unexpected += 1


async def post_counted(
    session: aiohttp.ClientSession,
    url: str,
    body: str | bytes,
    headers: dict[str, str],
    tally: Tally,
) -> str | None:
    """Posts one webhook and counts it in ``tally``: sent, its latency, its status; returns
    the status of its 200 reply. Every webhook expects a 200: a 403 (wrong token or signing
    URL), a 503, any other reply or none at all is counted unexpected, and gives None."""
    started = time.monotonic()
    tally.sent += 1
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as reply:
            content = await reply.read()
    except Exception as error:  # no HTTP reply, for whatever reason: counted by kind
        tally.transport_errors[type(error).__name__] += 1
        tally.unexpected += 1
        return None
    tally.latencies.append(time.monotonic() - started)
    if reply.status != 200:
        tally.http_errors[str(reply.status)] += 1
        tally.unexpected += 1
        return None
    status = reply_status(content)
    tally.statuses[status] += 1
    return status


def reply_status(body: bytes) -> str:
    """The ``status`` of a webhook's 200 reply (``unreadable`` when it has none)."""
    try:
        reply = json.loads(body)
    except ValueError:
        return "unreadable"
    status = reply.get("status") if isinstance(reply, dict) else None
    return status if isinstance(status, str) else "unreadable"


async def simulate(
    traffic: Traffic, options: SendOptions, progress: Progress | None = None
) -> Summary:
    """Sends every webhook of ``traffic`` and sums up what came back."""
    tally = Tally()
    ticker = asyncio.create_task(tick_progress(progress, tally)) if progress is not None else None
    started = time.monotonic()
    try:
        await Sender(options, tally).run(traffic)
    finally:
        duration = time.monotonic() - started
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if progress is not None:
            progress.finish()
    config = traffic.config
    return Summary(
        url=options.url,
        signed_for=options.sign_url or options.url,
        signed=options.token is not None,
        seed=config.seed,
        service_sid=config.service,
        account_sid=config.account,
        tally=tally,
        duration=duration,
        expected=traffic.expectation(),
    )


async def tick_progress(progress: Progress, tally: Tally) -> None:
    """Redraws ``progress`` from ``tally`` until cancelled."""
    while True:
        await asyncio.sleep(progress.interval)
        progress.update(tally)
