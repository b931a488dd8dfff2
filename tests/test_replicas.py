"""Several ``presence serve`` processes on one real Redis, as they run in production."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer, Service
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, ChangeRecorder, sign, wait_until

pytestmark = pytest.mark.slow  # several `presence serve` processes

GRACE = "1"


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> Iterator[list[Service]]:
    """Two service processes on the suite's Redis (emptied first), killed afterwards."""
    services = [
        Service(
            tmp_path / f"replica-{n}.log",
            redis_url=redis_server.url,
            twilio_auth_token=AUTH_TOKEN,
            offline_grace_seconds=GRACE,
        )
        for n in range(2)
    ]
    yield services
    for service in services:
        service.kill()


async def send(service: Service, params: dict[str, str]) -> dict[str, Any]:
    url = f"{service.url}/webhooks/sync"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(url, params),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=urlencode(params), headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def get_identity(service: Service, identity: str) -> dict[str, Any]:
    url = f"{service.url}/v1/services/{SERVICE_SID}/identities/{identity}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


def connect(event_id: int) -> dict[str, str]:
    return reachability("alice", f"E{event_id}", event_id, True, connected=True)


def disconnect(event_id: int) -> dict[str, str]:
    return reachability("alice", f"E{event_id - 1}", event_id, False, connected=False)


async def quiet_period() -> None:
    """Long enough for both sweepers to pass several times after a deadline."""
    await asyncio.sleep(float(GRACE) + 1.5)


async def test_two_replicas_publish_one_offline(replicas: list[Service], redis: Redis) -> None:
    first, second = (service.start() for service in replicas)
    async with ChangeRecorder(redis) as recorder:
        await send(first, connect(1))
        await send(second, disconnect(2))
        await recorder.wait_for(2, within=10)
        await quiet_period()
        published = await recorder.sync()

    assert [(m["online"], m["reason"], m["version"]) for m in published] == [
        (True, "connected", 1),
        (False, "disconnected", 2),
    ]


async def test_a_flap_across_replicas_publishes_nothing(
    replicas: list[Service], redis: Redis
) -> None:
    first, second = (service.start() for service in replicas)
    async with ChangeRecorder(redis) as recorder:
        await send(first, connect(1))
        await recorder.wait_for(1)
        # Rebalancing: the disconnect reaches one replica, the reconnect the other.
        await send(first, disconnect(2))
        assert (await get_identity(second, "alice"))["pending_offline"] is True
        await send(second, connect(3))
        await quiet_period()
        published = await recorder.sync()

    assert [m["version"] for m in published] == [1]
    state = await get_identity(first, "alice")
    assert state["online"] is True
    assert state["pending_offline"] is False


async def test_a_replica_killed_mid_grace_still_fires_the_offline_once_after_restart(
    replicas: list[Service], redis: Redis
) -> None:
    only = replicas[0].start()
    async with ChangeRecorder(redis) as recorder:
        await send(only, connect(1))
        await send(only, disconnect(2))
        only.kill()
        await asyncio.sleep(float(GRACE) + 0.5)  # the deadline passes with no replica running
        assert [m["version"] for m in await recorder.sync()] == [1]

        only.start()
        await recorder.wait_for(2, within=10)
        await quiet_period()
        published = await recorder.sync()

    assert [(m["online"], m["reason"], m["event_id"]) for m in published] == [
        (True, "connected", 1),
        (False, "disconnected", 2),
    ]
    state = await get_identity(only, "alice")
    assert state["online"] is False
    assert state["version"] == 2


async def test_a_replica_restarted_on_redis_that_was_never_away_keeps_its_state(
    replicas: list[Service],
) -> None:
    only = replicas[0].start()
    await send(only, connect(1))
    only.kill()
    only.start()

    async def still_online() -> bool:
        return (await get_identity(only, "alice"))["online"] is True

    await wait_until(still_online, 5, "alice to be online after the restart")
