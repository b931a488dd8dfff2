"""``GET /v1/services/{sid}/activity``: the webhook outcomes of the last hour, a minute at a
time, counted in Redis so that every replica's webhooks are in them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.activity import Activity, minute_label, minute_of
from presence.model import StoreUnavailable
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import RunningApp, make_store, sign, wait_until

Start = Callable[..., Awaitable[RunningApp]]

ACTIVITY = f"/v1/services/{SERVICE_SID}/activity"


async def hour(service: RunningApp) -> dict[str, int]:
    """The outcomes of the whole hour (a test may straddle the turn of a minute)."""
    response = await service.client.get(ACTIVITY)
    assert response.status == 200
    minutes: list[dict[str, Any]] = (await response.json())["minutes"]
    totals: dict[str, int] = {}
    for row in minutes:
        for name, value in row.items():
            if name != "minute":
                totals[name] = totals.get(name, 0) + value
    return totals


async def test_every_replicas_outcomes_and_flaps_are_counted_per_minute(
    start_service: Start, redis: Redis
) -> None:
    one = await start_service(offline_grace_seconds=10)
    two = await start_service(offline_grace_seconds=10)
    connect = reachability("alice", "E1", 1, True, connected=True)
    assert await one.status_of(connect) == "applied"
    assert await two.status_of(connect) == "duplicate"
    assert await two.status_of(reachability("alice", "E1", 0, True, connected=True)) == "stale"
    assert await one.status_of(connect | {"EventType": "endpoint_teleported"}) == "ignored"
    refused = await two.post_signed(connect | {"EventId": "-1"})
    assert refused.status == 400
    # A flap: gone and back within the grace, never published.
    assert await one.status_of(reachability("alice", "E1", 2, False, connected=False))
    assert await two.status_of(reachability("alice", "E2", 3, True, connected=True))
    # Not counted: a webhook whose signature does not hold could name any service.
    forged = await one.client.post(
        "/webhooks/sync",
        data=urlencode(connect),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(one.webhook_url, connect, "not-the-token"),
        },
    )
    assert forged.status == 403
    wanted = {
        "applied": 3,
        "duplicate": 1,
        "stale": 1,
        "ignored": 1,
        "rejected": 1,
        "flaps_suppressed": 1,
    }

    async def both_counted() -> bool:
        return await hour(one) == wanted

    await wait_until(both_counted, 10, "both replicas' counts in Redis")
    before = minute_label(minute_of(time.time()))
    response = await two.client.get(ACTIVITY)
    after = minute_label(minute_of(time.time()))
    minutes = (await response.json())["minutes"]
    assert len(minutes) == 60
    # The hour ends with the minute of the request (which may turn while it is answered).
    assert minutes[-1]["minute"] in {before, after}
    assert minutes[0]["applied"] == 0


async def test_counts_wait_in_memory_while_redis_is_away(private_redis: RedisServer) -> None:
    client = Redis.from_url(private_redis.url, decode_responses=True)
    activity = Activity(make_store(client, None))
    try:
        activity.count(SERVICE_SID, "applied")
        private_redis.stop()
        with pytest.raises(StoreUnavailable):
            await activity.flush()
        activity.count(SERVICE_SID, "applied")
        private_redis.start()
        await activity.flush()
        fresh = Activity(make_store(client, None))  # another replica reads Redis alone
        assert sum(row["applied"] for row in await fresh.minutes(SERVICE_SID)) == 2
    finally:
        await client.aclose()
