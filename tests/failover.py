"""A Redis failover under load, as the Sentinel and Redis Cluster tests drive it: signed
webhooks 20 in flight spread over two ``presence serve`` replicas, the master SIGKILLed in the
middle (optionally after its replicas fell behind), and what became of every webhook."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from harness.processes import Service, redis_cli
from presence.twilio.samples import SERVICE_SID
from tests.load import (
    Reply,
    Timed,
    connect,
    deliver,
    deliver_acknowledged,
    disconnect,
    lookup,
    paced_load,
)
from tests.support import Watcher, wait_until

LOAD = 500
"""One webhook every 10 ms (tests/load.py): the load spans about 5 s, across the failover."""
TWILIO_TIMEOUT = 15.0
"""Twilio gives up on a webhook after 15 s: every reply must come sooner."""
BEHIND_SECONDS = 0.5
"""How far behind the replicas are when the master dies, in the runs where they are: cut
off from it that long first (frozen, their replication links closed by the master), as in
a network partition. (Frozen alone, they would lose nothing: what the master sent waits in
their sockets and is applied when they wake.)"""
DEADLINES = 10
GRACE = "6"
"""The offline grace of the deadline identities: set before the failover, due after it."""


@dataclass
class FailoverRun:
    """What became of every webhook of the load."""

    replies: list[Timed]
    killed_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    """What the kill step recorded (a feed cursor taken just before it)."""

    @property
    def acknowledged(self) -> list[Reply]:
        return [t.reply for t in self.replies if t.reply.status == 200]

    @property
    def refused(self) -> list[Reply]:
        return [t.reply for t in self.replies if t.reply.status == 503]

    def failover_seconds(self, among: Collection[str] | None = None) -> float:
        """From the kill to the first 200 of a webhook sent after it (of one of ``among``,
        the identities the master that died held, when given)."""
        after = [
            t.at - self.killed_at
            for t in self.replies
            if t.reply.status == 200
            and t.at - t.reply.elapsed > self.killed_at
            and (among is None or t.reply.params["Identity"] in among)
        ]
        return min(after, default=float("nan"))

    def summary(self, name: str, lost: Sequence[str], among: Collection[str] | None = None) -> str:
        slowest = max(t.reply.elapsed for t in self.replies)
        failover = self.failover_seconds(among)
        took = "no 200 within the load" if math.isnan(failover) else f"{failover:.2f} s"
        return (
            f"\n{name}: {len(self.replies)} webhooks, {len(self.acknowledged)} x 200, "
            f"{len(self.refused)} x 503; acknowledged and lost: {len(lost)} of "
            f"{len(self.acknowledged)}; failover (kill to the first 200 after it): {took}; "
            f"slowest reply {slowest:.2f} s"
        )


Kill = Callable[[FailoverRun], Awaitable[None]]


async def load_through_a_failover(
    session: aiohttp.ClientSession, services: Sequence[Service], kill: Kill
) -> FailoverRun:
    """Sends LOAD connects (tests/load.py: paced_load) over both services; ``kill`` runs
    once enough replies are in."""
    run = FailoverRun([])

    async def failover(replies: list[Timed]) -> None:
        run.replies = replies
        run.killed_at = time.monotonic()  # (``kill`` sets it again when it kills later)
        await kill(run)

    await paced_load(session, services, LOAD, failover)
    return run


def assert_every_reply_in_time(run: FailoverRun) -> None:
    """200 or 503 (store_unavailable), never a 500, never later than Twilio waits."""
    replies = [t.reply for t in run.replies]
    assert [r.error for r in replies if r.error is not None] == []
    assert {r.status for r in replies} <= {200, 503}, [
        (r.status, r.body) for r in replies if r.status not in (200, 503)
    ]
    assert max(r.elapsed for r in replies) < TWILIO_TIMEOUT
    assert all(r.outcome == "applied" for r in run.acknowledged)
    assert {(r.body or {}).get("error") for r in run.refused} <= {"store_unavailable"}
    assert run.refused, "no webhook met the failover"


async def lost_acknowledged(
    session: aiohttp.ClientSession, service: Service, run: FailoverRun
) -> list[str]:
    """The identities of the webhooks answered 200 whose connect is gone."""
    names = [r.params["Identity"] for r in run.acknowledged]
    states = await lookup(session, service, names)
    return [
        name
        for name in names
        if not states[name]["online"] or states[name]["endpoints"] != [name.replace("load-", "E-")]
    ]


async def until_writes_are_acknowledged(
    session: aiohttp.ClientSession, services: Sequence[Service], within: float = 30.0
) -> None:
    """Until a new webhook gets 200 from each service (a new master, with its replicas)."""
    probes = iter(range(10**6))

    async def acknowledged() -> bool:
        for service in services:
            reply = await deliver(session, service, connect(f"probe-{next(probes)}", "EP"))
            if reply.status != 200:
                return False
        return True

    await wait_until(acknowledged, within, "a webhook answered 200 by each service")


async def resend_the_refused(
    session: aiohttp.ClientSession, services: Sequence[Service], run: FailoverRun
) -> list[str | None]:
    """Twilio's retry of every 503: each must be answered 200; returns their outcomes."""
    retries = await asyncio.gather(
        *(deliver(session, services[n % 2], r.params) for n, r in enumerate(run.refused))
    )
    assert [(r.status, r.body) for r in retries if r.status != 200] == []
    return [r.outcome for r in retries]


async def cut_off(master_port: int, freeze: Sequence[Callable[[], None]]) -> None:
    """The master's replicas stop hearing from it: each frozen (``freeze``), then their
    replication links closed by the master."""
    for pause in freeze:
        pause()
    await asyncio.to_thread(redis_cli, master_port, "client", "kill", "type", "replica")


async def assert_offline_once(watcher: Watcher, names: Sequence[str], version: int) -> None:
    """Waits until ``presence watch`` printed each of ``names`` offline, then asserts it
    printed each at ``version`` only: a change published again after a failover carries the
    version it had, and a deadline fired twice would carry the next one."""

    def offline_versions() -> dict[str, set[int]]:
        versions: dict[str, set[int]] = {}
        for change in watcher.changes():
            if change["identity"] in names and not change["online"]:
                versions.setdefault(change["identity"], set()).add(change["version"])
        return versions

    await wait_until(lambda: offline_versions().keys() == set(names), 10, "watch's offlines")
    assert offline_versions() == {name: {version} for name in names}


def deadline_identities() -> list[str]:
    return [f"deadline-{n}" for n in range(DEADLINES)]


async def set_deadlines(session: aiohttp.ClientSession, services: Sequence[Service]) -> None:
    """Connects, then disconnects, each deadline identity: its offline is due GRACE s later."""
    for n, name in enumerate(deadline_identities()):
        for params in (connect(name, "E1", 1), disconnect(name, "E1", 2)):
            await deliver_acknowledged(session, services[n % 2], params)


async def feed_cursor(session: aiohttp.ClientSession, service: Service) -> str:
    """A change-feed cursor of now (JSON read, no wait)."""
    url = f"{service.url}/v1/services/{SERVICE_SID}/changes"
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        cursor: str = (await response.json())["cursor"]
        return cursor


async def feed_since(
    session: aiohttp.ClientSession, service: Service, cursor: str
) -> dict[str, Any]:
    url = f"{service.url}/v1/services/{SERVICE_SID}/changes"
    async with session.get(url, params={"since": cursor, "limit": "1000"}) as response:
        assert response.status == 200, await response.text()
        page: dict[str, Any] = await response.json()
        return page


async def metric(session: aiohttp.ClientSession, service: Service, line_start: str) -> float:
    """The value of the first /metrics sample whose line starts with ``line_start``."""
    async with session.get(f"{service.url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")
