"""Push subscriptions delivered by two ``presence serve`` replicas on a real Redis (and on
Sentinels, and a Redis Cluster), to receivers of the test's own that verify every request
with the ``standardwebhooks`` package (tests/receiver.py): through a receiver that fails,
is slow and goes down; through the lease holder SIGKILLed mid-delivery; and the leases
spread over the replicas."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.processes import RedisClusterNodes, RedisSentinels, RedisServer, Service
from presence.twilio.samples import SERVICE_SID
from tests.load import connect, deliver_acknowledged, disconnect
from tests.receiver import Receiver, Request
from tests.support import AUTH_TOKEN, wait_until
from tests.test_faults import client_session, running

pytestmark = pytest.mark.slow  # two `presence serve` processes, Redis of the test's own

ADMIN = "admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN}"}
SETTINGS = {
    "twilio_auth_token": AUTH_TOKEN,
    "admin_token": ADMIN,
    "offline_grace_seconds": "0",
    "push_allow_private": "true",
    "push_timeout_seconds": "1",
}


VICTIMS_LAST_SECONDS = 1.0
"""After a SIGKILL, how long the receiver may still be reading what the killed replica sent."""


def replicas(tmp_path: Path, redis: dict[str, str], count: int = 2) -> list[Service]:
    return [Service(tmp_path / f"serve-{n}.log", **SETTINGS, **redis) for n in range(count)]


@pytest.fixture
def session_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


async def get(session: aiohttp.ClientSession, service: Service, path: str) -> Any:
    async with session.get(f"{service.url}{path}", headers=BEARER) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def subscribe(
    session: aiohttp.ClientSession, service: Service, receiver: Receiver
) -> tuple[dict[str, Any], dict[str, int]]:
    """A subscription from a listing's feed_cursor; and that listing (identity -> version)."""
    page = await get(
        session, service, f"/v1/services/{SERVICE_SID}/online?versions=true&limit=1000"
    )
    assert page["next_cursor"] is None
    url = f"{service.url}/v1/services/{SERVICE_SID}/subscriptions"
    body = {"url": receiver.url, "since": page["feed_cursor"]}
    async with session.post(url, json=body, headers=BEARER) as response:
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
    receiver.secrets = [created["secret"]]
    return created, {i["identity"]: i["version"] for i in page["identities"]}


async def online(session: aiohttp.ClientSession, service: Service) -> set[str]:
    page = await get(session, service, f"/v1/services/{SERVICE_SID}/online?limit=1000")
    assert page["next_cursor"] is None
    return set(page["identities"])


async def leases_of(session: aiohttp.ClientSession, service: Service) -> float:
    async with session.get(f"{service.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("presence_push_leases "):
                return float(line.split()[1])
    return 0.0


def assert_delivered_as_promised(
    receiver: Receiver, timeout: float = 1.0, taken_over_at: float | None = None
) -> None:
    """Each identity's changes acknowledged in version order; every request signed; a
    webhook-id sent again only after an attempt that failed (a 500, or an answer slower than
    the ``timeout``) or, after ``taken_over_at``, one the former holder had sent."""
    assert all(request.verified_by == (0,) for request in receiver.requests)
    by_identity: dict[str, list[int]] = {}
    for request in receiver.acknowledged():
        data = request.event["data"]
        by_identity.setdefault(data["identity"], []).append(data["version"])
    assert all(v == sorted(v) for v in by_identity.values()), by_identity
    by_id: dict[str, list[Request]] = {}
    for request in receiver.requests:
        by_id.setdefault(request.webhook_id, []).append(request)
    for webhook_id, tries in by_id.items():
        assert len({t.event["type"] for t in tries}) == 1
        for earlier, later in itertools.pairwise(tries):
            failed = not 200 <= earlier.status < 300 or (
                earlier.slow and receiver.slow_seconds > timeout
            )
            # Sent before the former holder died, and again after (the answer to the first may
            # have reached no one).
            lease_changed = (
                taken_over_at is not None and earlier.arrived < taken_over_at <= later.arrived
            )
            assert failed or lease_changed, (webhook_id, [(t.status, t.slow, t.at) for t in tries])


async def flips(
    session: aiohttp.ClientSession, services: list[Service], count: int, start: int = 0
) -> None:
    """``count`` identities online, every third then offline; spread over the replicas."""
    for n in range(start, start + count):
        await deliver_acknowledged(session, services[n % 2], connect(f"user-{n}", "E1", 1))
    for n in range(start, start + count, 3):
        await deliver_acknowledged(session, services[n % 2], disconnect(f"user-{n}", "E1", 2))


async def test_two_replicas_deliver_every_change_through_failures_slowness_and_an_outage(
    tmp_path: Path, session_redis: RedisServer, receiver: Receiver
) -> None:
    receiver.fail_ratio, receiver.slow_ratio, receiver.slow_seconds = 0.3, 0.1, 1.5
    services = replicas(tmp_path, {"redis_url": session_redis.url})
    with running(*services) as started:
        async with client_session() as session:
            created, held = await subscribe(session, started[0], receiver)
            await flips(session, list(started), 30)
            await wait_until(lambda: len(receiver.acknowledged()) >= 10, 20, "some delivered")
            await receiver.down()
            await flips(session, list(started), 20, start=30)
            await asyncio.sleep(3)
            await receiver.start()
            truth = await online(session, started[1])
            await wait_until(lambda: receiver.view(held) == truth, 90, "the view equal to /online")
            # 50 online and 10 + 7 offline changes: each acknowledged, whatever came (the view
            # can be right while a change and the one that undoes it both wait).
            offline = [*range(0, 30, 3), *range(30, 50, 3)]
            wanted = {(f"user-{n}", 1) for n in range(50)} | {(f"user-{n}", 2) for n in offline}

            def pushed() -> set[tuple[str, int]]:
                changes = [r.event["data"] for r in receiver.acknowledged()]
                return {(change["identity"], change["version"]) for change in changes}

            await wait_until(lambda: pushed() == wanted, 30, "every change acknowledged")
            path = f"/v1/services/{SERVICE_SID}/subscriptions/{created['id']}"

            async def caught_up() -> bool:
                return bool((await get(session, started[1], path))["lag_seconds"] == 0)

            # A change that failed a few times in a row waits out its backoff (up to a
            # minute) before it goes again.
            await wait_until(caught_up, 120, "the committed cursor at the present")
    assert_delivered_as_promised(receiver)


async def test_the_lease_holder_killed_mid_delivery_the_other_takes_over_within_the_lease(
    tmp_path: Path, session_redis: RedisServer, receiver: Receiver
) -> None:
    services = replicas(tmp_path, {"redis_url": session_redis.url})
    with running(*services) as started:
        async with client_session() as session:
            _, held = await subscribe(session, started[0], receiver)

            async def holder() -> Service | None:
                counts = [await leases_of(session, s) for s in started]
                return started[counts.index(1.0)] if sorted(counts) == [0.0, 1.0] else None

            async def one_holds() -> bool:
                return await holder() is not None

            await wait_until(one_holds, 10, "one replica holding the lease")
            victim = await holder()
            assert victim is not None
            survivor = next(s for s in started if s is not victim)
            receiver.slow_ratio, receiver.slow_seconds = 1.0, 0.2  # deliveries take a while
            await flips(session, [survivor, survivor], 40)
            await wait_until(lambda: len(receiver.acknowledged()) >= 5, 20, "delivery under way")
            victim.kill()  # SIGKILL, mid-delivery
            # The victim's last requests can be read only now: they waited in the receiver's
            # sockets while kill() blocked this loop. The survivor cannot send before the
            # victim's lease ends, 8 s after the kill at the earliest (a 10 s lease renewed
            # every 2 s): what comes in the first second is still the victim's.
            killed = time.monotonic()
            taken_over_at = killed + VICTIMS_LAST_SECONDS
            receiver.slow_ratio = 0.0

            def since_the_kill() -> list[float]:
                return [r.arrived for r in receiver.requests if r.arrived > taken_over_at]

            await wait_until(lambda: bool(since_the_kill()), 15, "the other taking over")
            took = min(since_the_kill()) - killed
            # The victim's lease (10 s) runs out, then the survivor's next turn (2 s) takes it.
            assert took < 12.5, took
            truth = await online(session, survivor)
            await wait_until(lambda: receiver.view(held) == truth, 60, "the view equal to /online")
    print(f"\ntaken over {took:.1f} s after the holder was killed")
    assert_delivered_as_promised(receiver, taken_over_at=taken_over_at)


async def test_leases_spread_over_the_live_replicas(
    tmp_path: Path, session_redis: RedisServer
) -> None:
    receivers = [await Receiver().start() for _ in range(6)]
    services = replicas(tmp_path, {"redis_url": session_redis.url}, count=3)
    try:
        with running(*services) as started:
            async with client_session() as session:
                for receiver in receivers:
                    await subscribe(session, started[0], receiver)

                async def spread() -> bool:
                    counts = [await leases_of(session, s) for s in started]
                    return sum(counts) == 6 and max(counts) <= 2

                await wait_until(spread, 10, "the leases spread, 2 each")
                started[2].kill()

                async def over_two() -> bool:
                    counts = [await leases_of(session, s) for s in started[:2]]
                    return sum(counts) == 6 and max(counts) <= 3

                await wait_until(over_two, 25, "the dead replica's leases taken, 3 each")
    finally:
        for receiver in receivers:
            await receiver.close()


@pytest.mark.parametrize("setup", ["sentinel", "cluster"])
async def test_deliveries_through_sentinels_and_on_a_redis_cluster(
    tmp_path: Path, receiver: Receiver, setup: str
) -> None:
    redis: dict[str, str]
    if setup == "sentinel":
        group = RedisSentinels(tmp_path / "redis").start()
        redis = {"redis_sentinels": group.addresses}
        stop = group.stop
    else:
        nodes = RedisClusterNodes(tmp_path / "cluster")
        nodes.start()
        redis = {"redis_url": nodes.url, "redis_cluster": "true"}
        stop = nodes.stop
    try:
        services = replicas(tmp_path, redis)
        with running(*services) as started:
            async with client_session() as session:
                _, held = await subscribe(session, started[0], receiver)
                await flips(session, list(started), 30)
                truth = await online(session, started[1])
                await wait_until(lambda: receiver.view(held) == truth, 30, "every change pushed")
        assert_delivered_as_promised(receiver)
    finally:
        stop()
