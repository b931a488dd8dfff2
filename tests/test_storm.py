"""``presence simulate --storm``: the plan, the delivery queue, the feed count, and storms run
against a ``presence serve`` process on the suite's real Redis."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from harness.processes import RedisServer, Service, service_env
from presence.simulate.command import StormOptions, UsageError, options
from presence.simulate.delivery import Delivered, Timed, deliver
from presence.simulate.flickers import FeedCount
from presence.simulate.report import Tally
from presence.simulate.storm import StormConfig, plan_storm
from presence.simulate.storm_report import StormSummary
from tests.support import AUTH_TOKEN, ChangeRecorder, wait_until

# The plan, without HTTP.


def test_each_identity_leaves_within_the_wave_and_returns_on_a_new_endpoint_after_the_delay() -> (
    None
):
    config = StormConfig(identities=400, wave=2.0, reconnect_min=0.5, reconnect_max=1.5, seed=4)
    plan = plan_storm(config)

    assert [w.identity for w in plan.connects] == config.names()
    assert len(plan.storm) == 800
    times = [w.at for w in plan.storm]
    assert times == sorted(times)
    assert len(plan.reconnect_of) == 400
    for leaving, returning in plan.reconnect_of.items():
        connect = plan.connects[config.names().index(plan.storm[leaving].identity)].params
        gone, back = plan.storm[leaving], plan.storm[returning]
        assert gone.identity == back.identity
        assert (gone.event_type, back.event_type) == ("endpoint_disconnected", "endpoint_connected")
        assert 0 <= gone.at <= 2.0
        assert 0.5 <= back.at - gone.at <= 1.5
        assert gone.params["EndpointId"] == connect["EndpointId"] != back.params["EndpointId"]
        event_id = int(connect["EventId"])
        assert int(gone.params["EventId"]) == event_id + 1
        assert int(back.params["EventId"]) == event_id + 2
        online = (connect["IsIdentityOnline"], gone.params["IsIdentityOnline"])
        assert (*online, back.params["IsIdentityOnline"]) == ("true", "false", "true")
    # The wave is spread out, not bunched at its start.
    assert min(times) < 0.1
    assert max(w.at for w in plan.storm if w.event_type == "endpoint_disconnected") > 1.9


def test_the_storm_is_the_same_for_a_seed_and_another_for_another() -> None:
    config = StormConfig(identities=50, seed=8)

    assert plan_storm(config) == plan_storm(config)
    assert plan_storm(config) != plan_storm(StormConfig(identities=50, seed=9))
    assert config.service != StormConfig(seed=9).service


def storm_options(given: dict[str, Any], environ: dict[str, str]) -> StormOptions:
    chosen = options({"storm": True, **given}, environ=environ)
    assert isinstance(chosen, StormOptions)
    return chosen


def test_storm_defaults_and_what_comes_from_the_environment() -> None:
    environ = {
        "PRESENCE_TWILIO_AUTH_TOKEN": "primary,secondary",
        "PRESENCE_OFFLINE_GRACE_SECONDS": "5",
        "PRESENCE_API_TOKEN": "api-secret",
    }
    chosen = storm_options({"url": "https://presence.example.com:8443/webhooks/sync"}, environ)
    bare = storm_options({}, {})

    storm = chosen.storm
    assert (storm.identities, storm.wave) == (20_000, 5.0)
    assert (storm.reconnect_min, storm.reconnect_max) == (0.2, 3.0)
    assert chosen.send.concurrency == 32
    assert chosen.send.token == "primary"
    assert storm.grace == 5.0
    assert (chosen.api.url, chosen.api.token) == ("https://presence.example.com:8443", "api-secret")
    assert bare.storm.grace == 10.0
    assert (bare.api.url, bare.api.token, bare.send.token) == ("http://127.0.0.1:8080", None, None)
    given = storm_options({"reconnect_delay": "1-2.5", "wave": "0", "grace": "3"}, environ)
    assert (given.storm.reconnect_min, given.storm.reconnect_max, given.storm.wave) == (1, 2.5, 0)
    assert given.storm.grace == 3.0


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"storm": True, "reconnect_delay": "3-1"}, "--reconnect-delay"),
        ({"storm": True, "reconnect_delay": "soon"}, "--reconnect-delay"),
        ({"storm": True, "wave": "-1"}, "--wave"),
        ({"storm": True, "grace": "nan"}, "--grace"),
        ({"storm": True, "events": "10"}, "--events"),
        ({"storm": True, "rate": "10"}, "--rate"),
        ({"storm": True, "api_url": "presence.example.com"}, "--api-url"),
        ({"wave": "2"}, "--wave"),
        ({"api_token": "t"}, "--api-token"),
    ],
)
def test_bad_or_misplaced_storm_options_are_named(given: dict[str, Any], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        options(given, environ={})


def summary_of(lateness: float, cpu: float, waited: float | None) -> StormSummary:
    """A storm of 10 s that sent late by up to ``lateness`` s, the sender on a CPU ``cpu`` of
    the time and waiting for one ``waited`` of it."""
    storm = Delivered(Tally(sent=2), lateness=[0.0, lateness], duration=10.0)
    storm.cpu_seconds = 10 * cpu
    storm.cpu_wait_seconds = None if waited is None else 10 * waited
    url = "http://127.0.0.1:8080/webhooks/sync"
    return StormSummary(url, url, True, "http://127.0.0.1:8080", StormConfig(), 32, storm=storm)


@pytest.mark.parametrize(
    ("lateness", "cpu", "waited", "limited"),
    [
        (2.0, 0.95, None, True),
        (2.0, 0.6, 0.35, True),  # runnable all along: on a CPU, or waiting for one
        (2.0, 0.6, None, False),
        (2.0, 0.3, 0.1, False),  # waiting for the service's replies
        (0.01, 0.95, 0.0, False),  # busy, but on time
    ],
)
def test_the_sender_was_the_limit_only_when_runnable_all_along_while_late(
    lateness: float, cpu: float, waited: float | None, limited: bool
) -> None:
    summary = summary_of(lateness, cpu, waited)

    assert summary.sender_limited is limited
    assert summary.as_json()["sender"]["limited"] is limited
    assert ("the LIMIT" in summary.as_text()) is limited


# The delivery queue, against a stub of the webhook receiver.


class Stub:
    """A webhook receiver that notes when each body came, and answers after ``delay``."""

    def __init__(self, delay: float = 0.0, stale: str = "") -> None:
        self.delay = delay
        self.stale = stale
        self.arrived: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        self.arrived[body] = time.monotonic()
        await asyncio.sleep(self.delay)
        status = "stale" if body == self.stale else "applied"
        return web.json_response({"status": status})


async def stub_url(aiohttp_server: AiohttpServer, stub: Stub) -> str:
    app = web.Application()
    app.router.add_post("/webhooks/sync", stub.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/webhooks/sync"))


def timed(at: float, name: str) -> Timed:
    return Timed(at, name.encode(), {"Content-Type": "text/plain"})


async def test_no_webhook_is_sent_before_its_time(aiohttp_server: AiohttpServer) -> None:
    stub = Stub()
    url = await stub_url(aiohttp_server, stub)
    webhooks = [timed(0.1 * n, f"w{n}") for n in range(6)]
    before = time.monotonic()

    async with aiohttp.ClientSession() as session:
        done = await deliver(session, url, webhooks, connections=4)

    assert done.tally.sent == 6 == done.tally.statuses["applied"]
    for n, webhook in enumerate(webhooks):
        assert stub.arrived[f"w{n}"] >= before + webhook.at
    assert min(done.lateness) >= 0
    assert done.scheduled == pytest.approx(0.5)
    assert done.duration >= 0.5


async def test_a_slow_service_gets_every_webhook_late_none_dropped(
    aiohttp_server: AiohttpServer,
) -> None:
    stub = Stub(delay=0.05)
    url = await stub_url(aiohttp_server, stub)
    webhooks = [timed(0.0, f"w{n}") for n in range(20)]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        done = await deliver(session, url, webhooks, connections=2)

    assert set(stub.arrived) == {f"w{n}" for n in range(20)}
    assert done.tally.sent == 20 == done.tally.statuses["applied"]
    assert done.tally.unexpected == 0
    # Two at a time, 50 ms each: the last pair waited for nine pairs before it.
    assert max(done.lateness) >= 0.4
    # Taken in queue order: a later webhook never overtakes an earlier one by a whole reply.
    order = sorted(stub.arrived, key=stub.arrived.__getitem__)
    assert all(abs(int(name[1:]) - n) <= 1 for n, name in enumerate(order))


@pytest.mark.parametrize("newer_first", [True, False])
async def test_a_stale_reply_is_expected_only_once_the_newer_webhook_was_sent(
    aiohttp_server: AiohttpServer, newer_first: bool
) -> None:
    stub = Stub(stale="old")
    url = await stub_url(aiohttp_server, stub)
    new = timed(0.0 if newer_first else 0.3, "new")
    old = timed(0.15, "old")
    old.newer = new

    async with aiohttp.ClientSession() as session:
        done = await deliver(session, url, sorted([old, new], key=lambda w: w.at), connections=2)

    assert done.tally.statuses == Counter({"applied": 1, "stale": 1})
    assert done.tally.unexpected == (0 if newer_first else 1)


# The feed count, against a stub of the change feed that drops the stream once.


async def test_the_feed_count_resumes_from_its_last_cursor_after_a_lost_stream(
    aiohttp_server: AiohttpServer,
) -> None:
    sid = "IS" + "ab" * 16
    changes = [
        {"service_sid": sid, "identity": "a", "online": False},
        {"service_sid": sid, "identity": "a", "online": True},
        {"service_sid": sid, "identity": "b", "online": False},
    ]
    resumed_from: list[str] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        since = request.headers["Last-Event-ID"]
        resumed_from.append(since)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        start = int(since[1:])
        # The first stream breaks after two changes; the next one sends the rest and stays.
        for n in range(start, len(changes) if start else 2):
            data = json.dumps(changes[n])
            await response.write(f"id: c{n + 1}\nevent: change\ndata: {data}\n\n".encode())
        if start:
            await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get(f"/v1/services/{sid}/changes", stream)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        count = FeedCount(session, str(server.make_url("")).rstrip("/"), sid, "c0")
        following = asyncio.create_task(count.run())
        try:
            await wait_until(lambda: count.changes >= 3, 5.0, "three changes counted")
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    assert resumed_from[:2] == ["c0", "c2"]
    assert count.changes == 3
    assert count.offline == Counter({"a": 1, "b": 1})
    assert count.online == Counter({"a": 1})
    assert count.reconnects >= 1


# Storms as a user runs them, against a `presence serve` process on the suite's Redis.


@pytest.fixture
async def start_serve(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Callable[..., Service]]:
    """Starts ``presence serve`` with these settings, on the suite's Redis (emptied first by
    the ``redis`` fixture); stopped after the test."""
    started: list[Service] = []

    def start(**settings: str) -> Service:
        service = Service(
            tmp_path / f"serve-{len(started)}.log",
            redis_url=redis_server.url,
            twilio_auth_token=AUTH_TOKEN,
            log_level="warning",
            **settings,
        )
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.kill()


async def run_storm_command(*args: str, **settings: str) -> tuple[int, dict[str, Any], str]:
    """Runs ``presence simulate --storm --json`` without blocking the test's event loop;
    returns its exit status, its summary and its standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "presence", "simulate", "--storm", "--json", *args,
        env=service_env(**settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, json.loads(out), err.decode()


async def lookup(service: Service, sid: str, names: list[str]) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{service.url}/v1/services/{sid}/lookup", json={"identities": names}
        ) as response,
    ):
        found: list[dict[str, Any]] = (await response.json())["identities"]
        return found


async def test_a_storm_within_the_grace_flickers_none_and_leaves_everyone_online(
    start_serve: Callable[..., Service], redis: Redis
) -> None:
    service = start_serve(offline_grace_seconds="1")
    names = StormConfig(identities=300).names()

    async with ChangeRecorder(redis) as published:
        status, summary, errors = await run_storm_command(
            "--url", f"{service.url}/webhooks/sync", "--identities", "300", "--wave", "0.5",
            "--reconnect-delay", "0.05-0.3", "--seed", "31", "--concurrency", "8",
            twilio_auth_token=AUTH_TOKEN, offline_grace_seconds="1",
        )  # fmt: skip
        messages = await published.sync()

    assert status == 0, errors
    assert summary["exit_status"] == 0
    assert (summary["identities"], summary["grace_seconds"], summary["connections"]) == (300, 1, 8)
    assert summary["online_phase"]["sent"] == 300
    assert summary["sent"] == 600
    assert summary["statuses"]["applied"] + summary["statuses"]["stale"] == 600
    assert summary["unexpected_statuses"] == 0
    assert (summary["flickers"], summary["flickered_identities"], summary["back_online"]) == (
        0,
        0,
        0,
    )
    assert summary["flickers_per_1000"] == 0
    assert summary["feed"] == {"changes": 0, "resets": [], "reconnects": 0, "unaccounted": 0}
    assert (summary["not_online"], summary["pending_offline"]) == (0, 0)
    assert summary["failure"] is None
    assert 0 <= summary["lateness_ms"]["p50"] <= summary["lateness_ms"]["max"]
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["sender"]["cpu_seconds"] > 0
    assert summary["sender"]["limited"] is False
    # What Redis carried: each identity announced online once (its connect), never offline.
    ours = [m for m in messages if m["service_sid"] == summary["service_sid"]]
    assert Counter(m["online"] for m in ours) == {True: 300}
    found = await lookup(service, summary["service_sid"], names)
    assert all(item["online"] and not item["pending_offline"] for item in found)
    assert all(len(item["endpoints"]) == 1 for item in found)


@pytest.mark.slow
async def test_reconnects_past_a_short_grace_flicker_as_many_as_redis_published(
    start_serve: Callable[..., Service], redis: Redis
) -> None:
    service = start_serve(offline_grace_seconds="1")

    async with ChangeRecorder(redis) as published:
        status, summary, errors = await run_storm_command(
            "--url", f"{service.url}/webhooks/sync", "--identities", "200", "--wave", "1",
            "--reconnect-delay", "0.2-2", "--seed", "32", "--grace", "1",
            twilio_auth_token=AUTH_TOKEN,
        )  # fmt: skip
        messages = await published.sync()

    assert status == 1, errors
    ours = [m for m in messages if m["service_sid"] == summary["service_sid"]]
    offline = [m for m in ours if not m["online"]]
    online = Counter(m["identity"] for m in ours if m["online"])
    # A reconnect 0.2-0.9 s later is inside the 1 s grace; one 1.6-2 s later is past it.
    assert 0 < len(offline) < 200
    assert summary["flickers"] == len(offline)
    assert summary["flickered_identities"] == len({m["identity"] for m in offline})
    assert summary["flickers_per_1000"] == 1000 * summary["flickered_identities"] / 200
    assert summary["back_online"] == sum(online.values()) - 200
    assert summary["feed"]["changes"] == len(ours) - 200
    assert summary["feed"]["unaccounted"] == 0
    # Every flicker was false: each identity is online at the end, as the report says.
    assert (summary["not_online"], summary["unexpected_statuses"]) == (0, 0)
    assert summary["failure"] is None
    assert summary["exit_status"] == 1
    versions: defaultdict[str, list[int]] = defaultdict(list)
    for message in ours:
        versions[message["identity"]].append(message["version"])
    assert all(seen == list(range(1, len(seen) + 1)) for seen in versions.values())


async def test_a_storm_the_query_api_refuses_fails_with_the_reason(
    start_serve: Callable[..., Service],
) -> None:
    service = start_serve(api_token="right")

    status, summary, _ = await run_storm_command(
        "--url", f"{service.url}/webhooks/sync", "--identities", "20", "--seed", "33",
        "--api-token", "wrong", twilio_auth_token=AUTH_TOKEN,
    )  # fmt: skip

    assert status == 1
    assert summary["online_phase"]["sent"] == 20
    assert summary["sent"] == 0
    assert "401" in summary["failure"]
    assert summary["exit_status"] == 1
