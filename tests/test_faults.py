"""Faults, on real processes and a real redis-server, no mocks: Redis killed and restarted
under load, replicas whose host clocks are skewed, and a Redis that answers slowly.

(A replica killed with SIGKILL mid-grace is covered by
``tests/test_replicas.py::test_a_replica_killed_mid_grace_still_fires_the_offline_once_after_restart``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer, Service
from tests.load import (
    CLIENT_TIMEOUT,
    FAULT_AFTER_REPLIES,
    Reply,
    Timed,
    connect,
    deliver,
    disconnect,
    lookup,
    paced_load,
)
from tests.support import AUTH_TOKEN, ChangeRecorder, Watcher, wait_until

pytestmark = (
    pytest.mark.slow
)  # Redis killed and restarted, replicas on skewed clocks (faketime), stalls

ANSWER_BOUND = 5.0
"""Every reply, 200 or 503, must come within this many seconds (3 s Redis timeout + slack)."""


# ---------------------------------------------------------------------------------------------
# Helpers


async def ready(session: aiohttp.ClientSession, service: Service) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(
            f"{service.url}/readyz", timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        ) as response:
            return response.status == 200
    return False


def changed_at_seconds(change: dict[str, Any]) -> float:
    return datetime.fromisoformat(change["changed_at"]).timestamp()


async def redis_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1_000_000


def assert_no_crash(*services: Service) -> None:
    for service in services:
        output = service.output()
        assert "Traceback" not in output, output[-4000:]
        assert "unexpected error" not in output, output[-4000:]


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Starts the services; kills every one of them afterwards, whatever happens."""
    try:
        yield tuple(service.start() for service in services)
    finally:
        for service in services:
            service.kill()


@contextlib.asynccontextmanager
async def client_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        yield session


# ---------------------------------------------------------------------------------------------
# 1. Redis killed (SIGKILL) and restarted in the middle of a load

LOAD = 300
"""One webhook every 10 ms (tests/load.py): the load spans about 3 s, across the outage."""
OUTAGE_SECONDS = 1.0


@dataclass
class OutageReport:
    replies: list[Reply]
    outage_seconds: float


async def run_load_through_an_outage(
    session: aiohttp.ClientSession, services: tuple[Service, ...], redis: RedisServer
) -> OutageReport:
    """Sends LOAD connects (tests/load.py: paced_load) over both services; kills Redis
    (SIGKILL) once enough replies are in and restarts it OUTAGE_SECONDS later on the same
    port, with its append-only file."""

    async def outage(_: list[Timed]) -> float:
        killed = time.monotonic()
        await asyncio.to_thread(redis.stop)  # SIGKILL
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(redis.start)  # same port, replays the append-only file
        return time.monotonic() - killed

    timed, outage_seconds = await paced_load(session, services, LOAD, outage)
    return OutageReport([t.reply for t in timed], outage_seconds)


async def test_redis_killed_and_restarted_under_load_loses_nothing_acknowledged(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    services = [
        Service(
            tmp_path / f"replica-{n}.log",
            redis_url=private_redis.url,
            twilio_auth_token=AUTH_TOKEN,
            offline_grace_seconds="1",
        )
        for n in range(2)
    ]
    with running(*services) as started:
        async with Watcher(redis_url=private_redis.url) as watcher, client_session() as session:
            await watcher.until_subscribed(private_redis.url)

            report = await run_load_through_an_outage(session, started, private_redis)
            replies = report.replies

            # Every webhook was answered, 200 or 503, in bounded time; never a 500, never a
            # hang, never a connection the service dropped.
            assert [r.error for r in replies if r.error is not None] == []
            assert {r.status for r in replies} <= {200, 503}, [
                (r.status, r.body) for r in replies if r.status not in (200, 503)
            ]
            assert max(r.elapsed for r in replies) < ANSWER_BOUND
            acknowledged = [r for r in replies if r.status == 200]
            refused = [r for r in replies if r.status == 503]
            assert all(r.outcome == "applied" for r in acknowledged)
            assert {(r.body or {}).get("error") for r in refused} <= {"store_unavailable"}
            # The outage really happened in the middle of the load.
            assert refused, "no webhook met the outage"
            assert len(acknowledged) >= FAULT_AFTER_REPLIES
            print(
                f"\nload: {len(replies)} sent, {len(acknowledged)} x 200, {len(refused)} x 503, "
                f"outage {report.outage_seconds:.2f}s, "
                f"slowest reply {max(r.elapsed for r in replies):.2f}s"
            )

            # The service recovers by itself: both replicas are ready again.
            async def all_ready() -> bool:
                return all([await ready(session, service) for service in started])

            await wait_until(all_ready, 15, "/readyz 200 on both replicas")

            # Nothing acknowledged was lost when Redis was killed.
            names = [r.params["Identity"] for r in acknowledged]
            states = await lookup(session, started[0], names)
            lost = [
                name
                for name in names
                if not states[name]["online"]
                or states[name]["endpoints"] != [name.replace("load-", "E-")]
            ]
            assert lost == []

            # Twilio's retries of the 503'd webhooks all succeed, once.
            retries = await asyncio.gather(
                *(deliver(session, started[1], r.params) for r in refused)
            )
            assert [(r.status, r.error) for r in retries if r.status != 200] == []
            outcomes = [r.outcome for r in retries]
            assert set(outcomes) <= {"applied", "duplicate"}
            print(
                f"retried the 503s: {outcomes.count('applied')} applied, "
                f"{outcomes.count('duplicate')} duplicate (had run before Redis died)"
            )

            # The whole expected state holds.
            everyone = [f"load-{i}" for i in range(LOAD)]
            states = await lookup(session, started[0], everyone)
            assert [n for n in everyone if states[n]["online"] is not True] == []
            assert {states[n]["version"] for n in everyone} == {1}
            assert {states[n]["last_event_id"] for n in everyone} == {1}

            # presence watch, started before the outage, prints changes made after it; the
            # sweepers fire a deadline set after it. Nothing but Redis was restarted.
            await watcher.until_subscribed(private_redis.url)
            reply = await deliver(session, started[0], connect("after", "EA", 1))
            assert (reply.status, reply.outcome) == (200, "applied")
            reply = await deliver(session, started[1], disconnect("after", "EA", 2))
            assert (reply.status, reply.outcome) == (200, "applied")

            def after_changes() -> list[tuple[bool, str, int]]:
                return [
                    (c["online"], c["reason"], c["version"])
                    for c in watcher.changes()
                    if c["identity"] == "after"
                ]

            await wait_until(
                lambda: len(after_changes()) >= 2, 15, "watch to print the offline of 'after'"
            )
            assert after_changes()[:2] == [(True, "connected", 1), (False, "disconnected", 2)]
            state = (await lookup(session, started[0], ["after"]))["after"]
            assert (state["online"], state["pending_offline"], state["version"]) == (
                False,
                False,
                2,
            )

            for service in started:
                assert service.process is not None
                assert service.process.poll() is None, "a service process died"
            assert watcher.process is not None
            assert watcher.process.returncode is None
        assert_no_crash(*started)


# ---------------------------------------------------------------------------------------------
# 2. Replicas whose host clocks are skewed (libfaketime): deadlines follow Redis' clock

SKEW_SECONDS = 5.0
SKEW_GRACE = 2.0
SWEEP_SLACK = 1.0
"""How late after its deadline an offline may be published: one sweep interval (0.5 s) and
the time to get there."""


def libfaketime() -> Path:
    """The libfaketime library (Debian's ``faketime`` package, which scripts/test installs)."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found or shutil.which("faketime") is None:
        raise RuntimeError("libfaketime is not installed: run scripts/test, which installs it")
    return found[0]


def skew(service: Service, offset: str) -> Service:
    """Runs ``service`` with its wall clock (time.time, datetime.now) moved by ``offset``;
    its monotonic clock, which asyncio's timers use, is left alone."""
    service.env |= {
        "LD_PRELOAD": str(libfaketime()),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return service


async def wall_clock_offset(session: aiohttp.ClientSession, service: Service) -> float:
    """How far the service's wall clock is from this process', read from the time of the
    access-log line of a request made now (JSON logs)."""

    def healthz_times() -> list[float]:
        lines = [line for line in service.output().splitlines() if line.startswith("{")]
        return [
            datetime.fromisoformat(entry["time"]).timestamp()
            for entry in map(json.loads, lines)
            if entry.get("path") == "/healthz"
        ]

    seen = len(healthz_times())
    before = time.time()
    async with session.get(f"{service.url}/healthz") as response:
        assert response.status == 200
    after = time.time()
    await wait_until(lambda: len(healthz_times()) > seen, 5, "the access-log line of /healthz")
    return healthz_times()[-1] - (before + after) / 2


@pytest.fixture
def skewed_replicas(tmp_path: Path, private_redis: RedisServer) -> Iterator[dict[str, Service]]:
    """Three replicas on one Redis: one on the true clock, one 5 s ahead, one 5 s behind."""
    settings = {
        "redis_url": private_redis.url,
        "twilio_auth_token": AUTH_TOKEN,
        "offline_grace_seconds": str(SKEW_GRACE),
        "log_format": "json",
    }
    replicas = {
        "true": Service(tmp_path / "true.log", **settings),
        "ahead": skew(Service(tmp_path / "ahead.log", **settings), f"+{SKEW_SECONDS:g}s"),
        "behind": skew(Service(tmp_path / "behind.log", **settings), f"-{SKEW_SECONDS:g}s"),
    }
    with running(*replicas.values()):
        yield replicas


async def test_skewed_replicas_really_run_on_skewed_clocks(
    skewed_replicas: dict[str, Service],
) -> None:
    async with client_session() as session:
        offsets = {
            name: await wall_clock_offset(session, service)
            for name, service in skewed_replicas.items()
        }
    print(f"\nwall-clock offsets: {', '.join(f'{k} {v:+.3f}s' for k, v in offsets.items())}")
    assert abs(offsets["true"]) < 0.5
    assert abs(offsets["ahead"] - SKEW_SECONDS) < 0.5
    assert abs(offsets["behind"] + SKEW_SECONDS) < 0.5


async def test_a_deadline_set_by_a_skewed_replica_fires_once_on_time(
    skewed_replicas: dict[str, Service], private_redis: RedisServer
) -> None:
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    disconnected: dict[str, tuple[float, float]] = {}
    try:
        async with ChangeRecorder(redis) as recorder, client_session() as session:
            # One identity disconnected through the replica 5 s ahead, one through the one
            # 5 s behind; all three replicas sweep.
            for name in ("ahead", "behind"):
                reply = await deliver(session, skewed_replicas["true"], connect(name, "E1"))
                assert (reply.status, reply.outcome) == (200, "applied")
            for name in ("ahead", "behind"):
                before = await redis_now(redis)
                reply = await deliver(session, skewed_replicas[name], disconnect(name, "E1", 2))
                after = await redis_now(redis)
                assert (reply.status, reply.outcome) == (200, "applied")
                disconnected[name] = (before, after)
            await recorder.wait_for(4, within=SKEW_GRACE + 8)
            await asyncio.sleep(SKEW_GRACE + 1.5)  # every sweeper passes again: nothing more
            published = await recorder.sync()
    finally:
        await redis.aclose()

    for name, (before, after) in disconnected.items():
        changes = [m for m in published if m["identity"] == name]
        assert [(m["online"], m["reason"], m["version"]) for m in changes] == [
            (True, "connected", 1),
            (False, "disconnected", 2),
        ]
        delay = changed_at_seconds(changes[1]) - before
        print(f"\n{name}: offline published {delay:.3f}s after the disconnect (Redis clock)")
        # Never before the deadline (changed_at has millisecond precision), and at most a
        # sweep later: not 5 s early, not 5 s late.
        assert changed_at_seconds(changes[1]) >= before + SKEW_GRACE - 0.001
        assert changed_at_seconds(changes[1]) <= after + SKEW_GRACE + SWEEP_SLACK


async def test_a_flap_across_skewed_replicas_publishes_nothing(
    skewed_replicas: dict[str, Service], private_redis: RedisServer
) -> None:
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    ahead, behind = skewed_replicas["ahead"], skewed_replicas["behind"]
    try:
        async with ChangeRecorder(redis) as recorder, client_session() as session:
            # The rebalancing disconnect reaches one skewed replica and the reconnect the
            # other, both ways round.
            for name, first, second in (("one", ahead, behind), ("two", behind, ahead)):
                steps = [
                    (first, connect(name, "E1", 1)),
                    (second, disconnect(name, "E1", 2)),
                    (first, connect(name, "E2", 3)),
                ]
                for service, params in steps:
                    reply = await deliver(session, service, params)
                    assert (reply.status, reply.outcome) == (200, "applied")
            await recorder.wait_for(2)
            await asyncio.sleep(SKEW_GRACE + 1.5)  # past the deadline, for every sweeper
            published = await recorder.sync()
            states = await lookup(session, skewed_replicas["true"], ["one", "two"])
    finally:
        await redis.aclose()

    assert sorted((m["identity"], m["version"]) for m in published) == [("one", 1), ("two", 1)]
    for state in states.values():
        assert (state["online"], state["pending_offline"], state["endpoints"]) == (
            True,
            False,
            ["E2"],
        )


# ---------------------------------------------------------------------------------------------
# 3. A slow Redis: busy with a long script (run from another client) while webhooks arrive

BUSY_LOOP = """
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local start = now_ms()
while now_ms() - start < tonumber(ARGV[1]) do end
return 1
"""
"""Keeps Redis busy for ARGV[1] ms: every other client's command waits meanwhile. Under
Redis' busy-reply-threshold (5 s) it is never answered BUSY: it is simply slow."""

SHORT_STALL_MS = 1000
"""Under the service's 3 s Redis timeout: webhooks are answered late, but 200."""
LONG_STALL_MS = 4500
"""Over it: the webhooks that wait more than 3 s are answered 503, and Redis runs their
script anyway once the stall ends: the retry must find it done, never apply it twice."""


@contextlib.asynccontextmanager
async def stalled(redis_url: str, milliseconds: int) -> AsyncIterator[None]:
    """Redis is busy for ``milliseconds`` from the start of the block (the block waits for it
    to end before leaving)."""
    blocker = Redis.from_url(redis_url)
    stall = asyncio.ensure_future(blocker.eval(BUSY_LOOP, 0, milliseconds))
    try:
        await asyncio.sleep(0.1)  # the script is under way
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stall, milliseconds / 1000 + 5)
        await blocker.aclose()


async def spaced(
    session: aiohttp.ClientSession, service: Service, webhooks: list[dict[str, str]], gap: float
) -> list[Reply]:
    """Sends the webhooks ``gap`` seconds apart, each on its own, without waiting for replies."""

    async def one(i: int, params: dict[str, str]) -> Reply:
        await asyncio.sleep(i * gap)
        return await deliver(session, service, params)

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(webhooks))))


async def test_a_slow_redis_gets_200_or_a_503_whose_retry_applies_once(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    service = Service(
        tmp_path / "service.log",
        redis_url=private_redis.url,
        twilio_auth_token=AUTH_TOKEN,
        offline_grace_seconds="1",
    )
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    slow = [f"slow-{i}" for i in range(8)]
    late = [f"late-{i}" for i in range(5)]
    try:
        with running(service):
            async with ChangeRecorder(redis) as recorder, client_session() as session:
                for name in slow:
                    reply = await deliver(session, service, connect(name, "E1"))
                    assert (reply.status, reply.outcome) == (200, "applied")

                # Slow, but within the timeout: every webhook waits, then is applied.
                async with stalled(private_redis.url, SHORT_STALL_MS):
                    delayed = await spaced(
                        session, service, [connect(n, "E1") for n in late], gap=0.15
                    )
                assert [(r.status, r.outcome) for r in delayed] == [(200, "applied")] * len(late)
                assert max(r.elapsed for r in delayed) > 0.5, "Redis was not slow"
                assert max(r.elapsed for r in delayed) < 3

                # Slower than the timeout: the first ones are answered 503 after 3 s (not
                # left hanging), the later ones 200 once Redis answers.
                async with stalled(private_redis.url, LONG_STALL_MS):
                    stalled_replies = await spaced(
                        session, service, [disconnect(n, "E1", 2) for n in slow], gap=0.5
                    )
                statuses = [r.status for r in stalled_replies]
                elapsed = [round(r.elapsed, 2) for r in stalled_replies]
                print(f"\nslow Redis ({LONG_STALL_MS} ms): statuses {statuses}, seconds {elapsed}")
                assert [r.error for r in stalled_replies if r.error] == []
                assert set(statuses) == {200, 503}, statuses
                assert max(r.elapsed for r in stalled_replies) < ANSWER_BOUND
                refused = [r for r in stalled_replies if r.status == 503]
                assert {(r.body or {}).get("error") for r in refused} == {"store_unavailable"}
                assert all(r.outcome == "applied" for r in stalled_replies if r.status == 200)

                # Healthy again, and the retries of the 503s apply nothing twice.
                await wait_until(lambda: ready(session, service), 10, "/readyz 200")
                retries = [await deliver(session, service, r.params) for r in refused]
                assert [r.status for r in retries] == [200] * len(refused)
                assert {r.outcome for r in retries} <= {"applied", "duplicate"}
                print(f"retries of the 503s: {[r.outcome for r in retries]}")

                await recorder.wait_for(2 * len(slow) + len(late), within=10)
                await asyncio.sleep(2.5)  # past every deadline: nothing more is published
                published = await recorder.sync()
                states = await lookup(session, service, slow + late)

                reply = await deliver(session, service, connect("afterwards", "E1"))
                assert (reply.status, reply.outcome) == (200, "applied")
            assert service.process is not None
            assert service.process.poll() is None
        assert_no_crash(service)
    finally:
        await redis.aclose()

    for name in slow:
        assert [
            (m["online"], m["reason"], m["version"]) for m in published if m["identity"] == name
        ] == [(True, "connected", 1), (False, "disconnected", 2)]
        assert (states[name]["online"], states[name]["version"]) == (False, 2)
    for name in late:
        assert [m["version"] for m in published if m["identity"] == name] == [1]
        assert (states[name]["online"], states[name]["endpoints"]) == (True, ["E1"])
