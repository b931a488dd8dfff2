"""Signed webhooks sent to ``presence serve`` processes as Twilio sends them: one at a time,
or as a paced load with a fault (Redis killed, a master failing over) in its middle."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp

from harness.processes import Service
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import sign

T = TypeVar("T")

CLIENT_TIMEOUT = 8.0
"""Seconds a test waits for any reply: well under Twilio's 15 s, and over the service's own
bound (Redis' 3 s socket timeout) with room to spare."""

IN_FLIGHT = 20
PACE_SECONDS = 0.01
"""One webhook every 10 ms."""
FAULT_AFTER_REPLIES = 60


@dataclass
class Reply:
    """What became of one webhook: its HTTP status and body, or the client-side error."""

    params: dict[str, str]
    status: int | None
    body: dict[str, Any] | None
    elapsed: float
    error: str | None = None

    @property
    def outcome(self) -> str | None:
        return None if self.body is None else self.body.get("status")


@dataclass
class Timed:
    """A reply, and when it arrived (monotonic seconds)."""

    reply: Reply
    at: float


async def deliver(
    session: aiohttp.ClientSession, service: Service, params: dict[str, str]
) -> Reply:
    """POSTs a webhook signed as Twilio signs it; never raises (a client error is recorded)."""
    url = f"{service.url}/webhooks/sync"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(url, params),
    }
    started = time.monotonic()
    try:
        async with session.post(
            url,
            data=urlencode(params),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
        ) as response:
            text = await response.text()
            body: dict[str, Any] | None
            try:
                body = json.loads(text)
            except ValueError:
                body = {"raw": text}
            return Reply(params, response.status, body, time.monotonic() - started)
    except (aiohttp.ClientError, TimeoutError) as error:
        return Reply(params, None, None, time.monotonic() - started, repr(error))


async def deliver_acknowledged(
    session: aiohttp.ClientSession,
    service: Service,
    params: dict[str, str],
    within: float = 30.0,
) -> Reply:
    """Delivers a webhook of a test's preparation as Twilio would: a 503 (Redis busy, or too
    few replicas confirmed in time on a loaded machine) is sent again until a 200 comes,
    within ``within`` seconds. Asserts that 200 says ``applied``, or ``duplicate`` when an
    earlier attempt was refused after taking effect (a 503 is all or nothing)."""
    deadline = time.monotonic() + within
    refused: list[Reply] = []
    while True:
        reply = await deliver(session, service, params)
        if reply.status != 503 or time.monotonic() > deadline:
            break
        refused.append(reply)
        await asyncio.sleep(0.1)
    wanted = ["applied", "duplicate"] if refused else ["applied"]
    assert reply.status == 200, (reply, refused)
    assert reply.outcome in wanted, (reply, refused)
    return reply


async def lookup(
    session: aiohttp.ClientSession, service: Service, identities: list[str]
) -> dict[str, dict[str, Any]]:
    url = f"{service.url}/v1/services/{SERVICE_SID}/lookup"
    async with session.post(url, json={"identities": identities}) as response:
        assert response.status == 200, await response.text()
        found = (await response.json())["identities"]
    return {state["identity"]: state for state in found}


def connect(identity: str, endpoint: str, event_id: int = 1) -> dict[str, str]:
    return reachability(identity, endpoint, event_id, True, connected=True)


def disconnect(identity: str, endpoint: str, event_id: int) -> dict[str, str]:
    return reachability(identity, endpoint, event_id, False, connected=False)


async def paced_load(
    session: aiohttp.ClientSession,
    services: Sequence[Service],
    load: int,
    fault: Callable[[list[Timed]], Awaitable[T]],
) -> tuple[list[Timed], T]:
    """Sends ``load`` connects (identity load-i, endpoint E-i), one every PACE_SECONDS, at
    most IN_FLIGHT at once, spread over the services; runs ``fault`` (given the replies so
    far, a list that goes on filling) once FAULT_AFTER_REPLIES replies are in. Returns every
    reply in the order they arrived, and what ``fault`` returned."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    replies: list[Timed] = []
    enough = asyncio.Event()
    started = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, started + i * PACE_SECONDS - time.monotonic()))
        async with slots:
            service = services[i % len(services)]
            reply = await deliver(session, service, connect(f"load-{i}", f"E-{i}"))
        replies.append(Timed(reply, time.monotonic()))
        if len(replies) >= FAULT_AFTER_REPLIES:
            enough.set()

    sending = asyncio.gather(*(one(i) for i in range(load)))
    try:
        await enough.wait()
        result = await fault(replies)
    finally:
        await sending
    return replies, result
