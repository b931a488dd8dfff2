"""Graceful shutdown: on SIGTERM, no new connections, every webhook in flight answered, then
exit, within a bounded time, even when Redis does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import RedisServer, Service
from presence.store.connections import redis_client
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, EventStream, make_store, post_webhook, wait_until

pytestmark = pytest.mark.slow  # `presence serve` processes held in flight by a frozen Redis

IN_FLIGHT = 10


@pytest.fixture
def service(tmp_path: Path, private_redis: RedisServer) -> Iterator[Service]:
    service = Service(
        tmp_path / "service.log", redis_url=private_redis.url, twilio_auth_token=AUTH_TOKEN
    ).start()
    yield service
    service.kill()


@contextlib.contextmanager
def frozen(redis: RedisServer) -> Iterator[None]:
    """Redis stops answering (SIGSTOP) until the block ends."""
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)


async def in_flight(service: Service) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == "presence_webhooks_in_flight":
            return family.samples[0].value
    raise AssertionError("no presence_webhooks_in_flight in /metrics")


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return True
    return False


def connect(n: int) -> dict[str, str]:
    return reachability(f"user-{n}", "E1", 1, True, connected=True)


async def start_in_flight(service: Service) -> list[asyncio.Task[tuple[int, dict[str, Any]]]]:
    """Sends IN_FLIGHT webhooks and returns once the service is handling all of them."""
    tasks = [asyncio.create_task(post_webhook(service.url, connect(n))) for n in range(IN_FLIGHT)]

    async def all_in_flight() -> bool:
        return await in_flight(service) == IN_FLIGHT

    await wait_until(all_in_flight, what=f"{IN_FLIGHT} webhooks in flight")
    return tasks


async def test_sigterm_finishes_the_webhooks_in_flight_then_exits(
    service: Service, private_redis: RedisServer
) -> None:
    assert service.process is not None
    with frozen(private_redis):
        # Redis is stuck, so every webhook waits inside the service, mid-handling.
        tasks = await start_in_flight(service)
        service.process.send_signal(signal.SIGTERM)
        await wait_until(lambda: refuses_connections(service.port), what="the listener to close")
        assert not any(task.done() for task in tasks)
    # Redis is back well within its timeout: every webhook in flight is applied and answered.
    replies = await asyncio.gather(*tasks)
    assert replies == [(200, {"status": "applied"})] * IN_FLIGHT
    assert service.process.wait(timeout=15) == 0
    output = service.output()
    assert output.index("stopping") < output.index("stopped")

    store = make_store(redis_client(private_redis.url), None)
    try:
        found = await store.lookup(SERVICE_SID, [f"user-{n}" for n in range(IN_FLIGHT)])
        assert all(identity.online for identity in found)
    finally:
        await store.close()


async def test_sigterm_with_redis_gone_still_answers_and_exits_in_bounded_time(
    service: Service, private_redis: RedisServer
) -> None:
    assert service.process is not None
    with frozen(private_redis):
        tasks = await start_in_flight(service)
        stopped_at = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        # Redis never answers: each webhook gets a 503 (safe to retry) at Redis' timeout,
        # never a dropped connection, and the process exits well within its shutdown timeout.
        replies = await asyncio.gather(*tasks)
        assert {status for status, _ in replies} == {503}
        assert all(body["error"] == "store_unavailable" for _, body in replies)
        assert service.process.wait(timeout=15) == 0
        took = time.monotonic() - stopped_at
    assert took < 10, f"shutdown took {took:.1f}s"


async def test_sigterm_ends_change_streams_at_once_and_they_resume_elsewhere(
    service: Service, tmp_path: Path, private_redis: RedisServer
) -> None:
    """Open streams do not hold the shutdown for its whole timeout: they end at once, and a
    client resumes from its last event ID on another replica, missing nothing."""
    other = Service(
        tmp_path / "other.log", redis_url=private_redis.url, twilio_auth_token=AUTH_TOKEN
    ).start()
    feed = f"/v1/services/{SERVICE_SID}/changes"
    try:
        streams = [EventStream(service.url + feed) for _ in range(3)]
        for stream in streams:
            await stream.__aenter__()
        status, _ = await post_webhook(
            service.url, reachability("alice", "E1", 1, True, connected=True)
        )
        assert status == 200
        for stream in streams:
            await stream.wait_for(1)

        started = time.monotonic()
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        for stream in streams:
            await asyncio.wait_for(stream.ended.wait(), 5)
        assert service.process.wait(timeout=10) == 0
        stopped = time.monotonic() - started
        for stream in streams:
            await stream.close()

        last_id = streams[0].events[-1].id
        assert last_id is not None
        status, _ = await post_webhook(
            other.url, reachability("bob", "E1", 1, True, connected=True)
        )
        assert status == 200
        async with EventStream(other.url + feed, {"Last-Event-ID": last_id}) as resumed:
            await resumed.wait_for(1)
            await asyncio.sleep(0.3)
    finally:
        other.kill()

    # Well inside the 10 s shutdown timeout: the streams did not hold it.
    assert stopped < 5
    assert [c["identity"] for c in resumed.changes()] == ["bob"]
