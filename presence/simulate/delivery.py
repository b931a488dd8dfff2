"""Twilio's delivery queue, as a storm needs it: webhooks in the order of their scheduled
times, each sent no earlier than its time by the first of ``connections`` workers that is
free, each worker on a keep-alive connection. When the service is slow the queue falls
behind and webhooks go out late; none is dropped.

Every webhook is signed before the clock starts, so that the sender spends its time during
a storm on sending alone; ``Delivered`` says how late it sent and what it cost in CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from presence.simulate.report import Progress, Tally
from presence.simulate.send import post_counted, tick_progress
from presence.twilio import USER_AGENT
from presence.twilio.signing import form_headers

LAG_TICK_SECONDS = 0.01
"""How often the event loop's lag is sampled while delivering."""
SCHEDSTAT = Path("/proc/thread-self/schedstat")
"""Linux: the time this thread has run and waited for a CPU, in nanoseconds."""


def cpu_wait() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (None off Linux):
    on a shared machine, how much the others kept the sender from running."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass(eq=False, slots=True)
class Timed:
    """A signed webhook, due ``at`` seconds after the start of delivery."""

    at: float
    body: bytes
    headers: dict[str, str]
    newer: Timed | None = None
    """A newer webhook of the same identity: once that one was sent, ``stale`` is the right
    reply to this one too (the service may have applied the newer one first)."""
    sent: bool = False


def signed(
    at: float,
    params: dict[str, str],
    headers: dict[str, str],
    *,
    url: str,
    token: str | None,
) -> Timed:
    """A form webhook as Twilio sends it, signed for ``url`` with ``token`` (None: unsigned)."""
    all_headers = {**form_headers(token, url, params), "User-Agent": USER_AGENT, **headers}
    return Timed(at, urlencode(params).encode(), all_headers)


@dataclass
class Delivered:
    """What delivering a sequence of webhooks took."""

    tally: Tally
    lateness: list[float] = field(default_factory=list)
    """Seconds from each webhook's scheduled time to its sending."""
    loop_lag: list[float] = field(default_factory=list)
    """Seconds the sender's event loop woke up late, sampled every ``LAG_TICK_SECONDS``."""
    scheduled: float = 0.0
    """When the last webhook was due, in seconds after the start."""
    duration: float = 0.0
    """Seconds from the start to the last reply."""
    cpu_seconds: float = 0.0
    """The sender process's CPU time over ``duration`` (every thread, user and system)."""
    cpu_wait_seconds: float | None = None
    """How long the sender's event loop waited for a CPU over ``duration`` (None: unknown)."""
    last: float = 0.0
    """When the last reply came (``time.monotonic``)."""

    @property
    def cpu_share(self) -> float:
        """The sender's CPU time over the wall time: 1.0 is one core, busy throughout."""
        return self.cpu_seconds / self.duration if self.duration > 0 else 0.0

    @property
    def cpu_wait_share(self) -> float | None:
        """The share of the wall time the sender waited for a CPU that others held."""
        if self.cpu_wait_seconds is None:
            return None
        return self.cpu_wait_seconds / self.duration if self.duration > 0 else 0.0


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    webhooks: Sequence[Timed],
    connections: int,
    progress: Progress | None = None,
) -> Delivered:
    """Sends ``webhooks`` (in the order given, which is their time order) over ``connections``
    workers; a webhook is expected to be answered 200 ``applied``."""
    done = Delivered(Tally(), scheduled=max((webhook.at for webhook in webhooks), default=0.0))
    queue = iter(webhooks)
    ticker = asyncio.create_task(tick_progress(progress, done.tally)) if progress else None
    sampler = asyncio.create_task(_sample_lag(done.loop_lag))
    cpu, waited, start = time.process_time(), cpu_wait(), time.monotonic()
    try:
        await asyncio.gather(*(_work(session, url, queue, start, done) for _ in range(connections)))
    finally:
        done.cpu_seconds = time.process_time() - cpu
        waited_now = cpu_wait()
        if waited is not None and waited_now is not None:
            done.cpu_wait_seconds = waited_now - waited
        done.last = time.monotonic()
        done.duration = done.last - start
        for task in (ticker, sampler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if progress is not None:
            progress.finish()
    return done


async def _work(
    session: aiohttp.ClientSession,
    url: str,
    queue: Iterator[Timed],
    start: float,
    done: Delivered,
) -> None:
    tally = done.tally
    # The workers share one iterator: the next webhook in time order goes to the first
    # worker that is free, and taking it is atomic (no await between the check and the take).
    for webhook in queue:
        due = start + webhook.at
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sent = time.monotonic()
        done.lateness.append(sent - due)
        webhook.sent = True
        status = await post_counted(session, url, webhook.body, webhook.headers, tally)
        if status is None:
            continue
        overtaken = status == "stale" and webhook.newer is not None and webhook.newer.sent
        if status != "applied" and not overtaken:
            tally.unexpected += 1


async def _sample_lag(samples: list[float]) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(LAG_TICK_SECONDS)
        samples.append(max(0.0, time.monotonic() - before - LAG_TICK_SECONDS))
