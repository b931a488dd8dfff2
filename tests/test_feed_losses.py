"""The change feed when Redis forgets, and when it forgets nothing (CONTRACT section 7): on a
real ``redis-server`` with an append-only file, consumers that do what the docs say
(tests/consumer.py), reading the feed each of the four ways.

- A clean restart (SIGTERM, ``appendfsync always``) while streams are open and polls wait:
  no reset, no change lost or repeated.
- A restart from older data that lost changes a consumer had received: that consumer gets a
  reset (``lost``), every time, and ends equal to ``/online``; versions used again afterwards
  reach it.
- A consumer whose cursor comes before every lost change, and that never saw them: it goes on
  without a reset, and ends equal to ``/online``.
- Redis started empty: a reset.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness.processes import RedisServer
from presence.feed import hub as feed_hub
from presence.twilio.samples import SERVICE_SID, reachability
from tests.consumer import MODES, Consumer, Mode
from tests.support import EventStream, RunningApp, online_names, wait_until

pytestmark = pytest.mark.slow  # redis-server restarted under open streams and waiting polls

Start = Callable[..., Awaitable[RunningApp]]

TOKEN = "losses-token"
CLEAN_RESTARTS = 3


async def service_on(start_service: Start, redis: RedisServer) -> RunningApp:
    """The service, offline at once (grace 0), on ``redis``."""
    return await start_service(redis_url=redis.url, api_token=TOKEN, offline_grace_seconds=0)


def consumer(service: RunningApp, mode: Mode) -> Consumer:
    return Consumer(str(service.client.make_url("")).rstrip("/"), SERVICE_SID, TOKEN, mode)


async def flip(service: RunningApp, name: str, event_id: int, online: bool) -> None:
    """A connect (online) or disconnect, as Twilio delivers it: again after a 503 (Redis
    coming back), until it is answered; applied once (a grace of 0: one change each)."""
    params = reachability(name, "E1", event_id, online, connected=online)
    refused = 0
    while True:
        response = await service.post_signed(params)
        if response.status != 503 or refused > 100:
            break
        refused += 1
        await asyncio.sleep(0.05)
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] in (
        ("applied", "duplicate") if refused else ("applied",)
    )


async def listed(service: RunningApp) -> set[str]:
    """Who ``/online`` lists."""
    return await online_names(
        service.client.get,
        f"/v1/services/{SERVICE_SID}/online",
        {"Authorization": f"Bearer {TOKEN}"},
    )


@pytest.fixture
def redis_aof(tmp_path: Path) -> RedisServer:
    return RedisServer(tmp_path / "redis", appendonly=True)


async def test_a_clean_restart_resets_nobody_and_loses_or_repeats_nothing(
    start_service: Start, redis_aof: RedisServer
) -> None:
    redis_aof.start()
    try:
        service = await service_on(start_service, redis_aof)
        await flip(service, "before", 1, True)
        consumers = [consumer(service, mode) for mode in MODES]
        for c in consumers:
            await c.__aenter__()
        try:
            online = {"before"}
            for restart in range(CLEAN_RESTARTS):
                name = f"user-{restart}"
                await flip(service, name, 1, True)
                online.add(name)
                for c in consumers:
                    await c.until(online)
                # Streams open, polls waiting: Redis stops as an operator stops it, and
                # comes back with everything it had.
                redis_aof.shutdown()
                redis_aof.start()
                await flip(service, name, 2, False)
                online.discard(name)
                await flip(service, f"after-{restart}", 1, True)
                online.add(f"after-{restart}")
                assert await listed(service) == online
                for c in consumers:
                    await c.until(online)
        finally:
            for c in consumers:
                await c.__aexit__(None, None, None)
    finally:
        redis_aof.stop()
    for c in consumers:
        assert (c.mode, c.resets, c.repeats) == (c.mode, [], [])
        wanted = {("before", 1)} | {
            pair
            for n in range(CLEAN_RESTARTS)
            for pair in ((f"user-{n}", 1), (f"user-{n}", 2), (f"after-{n}", 1))
        }
        # Each change once (the listing brought "before"), none lost.
        assert sorted(c.applied) == sorted(wanted - {("before", 1)}), c.mode


@pytest.mark.parametrize("mode", MODES)
async def test_a_restart_from_older_data_resets_a_consumer_that_saw_what_it_lost(
    start_service: Start, redis_aof: RedisServer, tmp_path: Path, mode: Mode
) -> None:
    redis_aof.start()
    try:
        service = await service_on(start_service, redis_aof)
        await flip(service, "alice", 1, True)
        older = redis_aof.copy_data(tmp_path / "older")
        async with consumer(service, mode) as c:
            await flip(service, "bob", 1, True)
            await c.until({"alice", "bob"})
            assert c.held["bob"] == (1, True)
            # A crash that lost bob (appendfsync everysec), or a backup restored.
            redis_aof.stop()
            redis_aof.restore_data(older)
            redis_aof.start()
            assert await listed(service) == {"alice"}
            await c.until({"alice"})
            assert c.resets == ["lost"]
            # bob's next change is version 1 again: a consumer that forgot what it held on
            # the reset takes it.
            await flip(service, "bob", 1, True)
            await c.until({"alice", "bob"})
            assert c.held["bob"] == (1, True)
            assert c.resets == ["lost"]
    finally:
        redis_aof.stop()


@pytest.mark.parametrize("mode", ["stream-resumed", "poll-since"])
async def test_a_consumer_before_every_lost_change_goes_on_without_a_reset(
    start_service: Start, redis_aof: RedisServer, tmp_path: Path, mode: Mode
) -> None:
    redis_aof.start()
    try:
        service = await service_on(start_service, redis_aof)
        await flip(service, "alice", 1, True)
        async with consumer(service, mode) as c:
            await flip(service, "carol", 1, True)
            await c.until({"alice", "carol"})
            # The data is copied after the consumer's position; what follows is lost, and the
            # consumer never reads it.
            older = redis_aof.copy_data(tmp_path / "older")
            await flip(service, "bob", 1, True)
            await flip(service, "carol", 2, False)
            redis_aof.stop()
            redis_aof.restore_data(older)
            redis_aof.start()
            await flip(service, "dave", 1, True)
            assert await listed(service) == {"alice", "carol", "dave"}
            await c.until({"alice", "carol", "dave"})
            assert (c.resets, c.repeats) == ([], [])
            assert c.held["carol"] == (1, True)
    finally:
        redis_aof.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_redis_started_empty_resets_every_consumer(
    start_service: Start, redis_aof: RedisServer, mode: Mode
) -> None:
    redis_aof.start()
    try:
        service = await service_on(start_service, redis_aof)
        await flip(service, "alice", 1, True)
        async with consumer(service, mode) as c:
            await flip(service, "bob", 1, True)
            await c.until({"alice", "bob"})
            redis_aof.stop()
            redis_aof.restore_data(None)
            redis_aof.start()
            await c.until(set())
            assert c.resets == ["lost"]
            await flip(service, "carol", 1, True)
            await c.until({"carol"})
    finally:
        redis_aof.stop()


async def test_a_stream_ahead_of_its_process_reader_is_reset_when_what_it_saw_is_lost(
    start_service: Start,
    redis_aof: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream resumed from a cursor its process's shared reader has not reached (read from
    another replica, say) was sent what the reader has not read. Redis restarted from older
    data loses those changes: the reader, whose own cursor comes before them, sees no loss,
    and must not carry the stream on as if nothing happened."""
    gate = asyncio.Event()
    gate.set()
    read = feed_hub.FeedHub._read

    async def gated(hub: feed_hub.FeedHub, reader: Any) -> bool:
        await gate.wait()
        return await read(hub, reader)

    monkeypatch.setattr(feed_hub.FeedHub, "_read", gated)
    redis_aof.start()
    try:
        service = await service_on(start_service, redis_aof)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        feed = f"/v1/services/{SERVICE_SID}/changes"
        url = str(service.client.make_url(feed))
        # A first stream starts this process's reader; once it has read alice's change, it
        # reads nothing more.
        async with EventStream(url, headers) as first:
            await flip(service, "alice", 1, True)
            await first.wait_for(1)
            older = redis_aof.copy_data(tmp_path / "older")
            gate.clear()
            start = await (await service.client.get(feed, headers=headers)).json()
            await flip(service, "bob", 1, True)
            # bob's change, read by a JSON page (as on another replica): its cursor is ahead
            # of this process's reader.
            page = await (
                await service.client.get(feed, params={"since": start["cursor"]}, headers=headers)
            ).json()
            assert [c["identity"] for c in page["changes"]] == ["bob"]
            resumed = f"{url}?since={page['cursor']}"
            async with EventStream(resumed, headers) as stream:
                await wait_until(lambda: ": open" in stream.comments, 5, "the stream open")
                redis_aof.stop()
                redis_aof.restore_data(older)  # bob's change is gone
                redis_aof.start()
                gate.set()
                await flip(service, "carol", 1, True)
                await wait_until(lambda: bool(stream.events), 10, "an event after the loss")
                assert stream.events[0].event == "reset"
                assert json.loads(stream.events[0].data) == {"reason": "lost"}
    finally:
        redis_aof.stop()
