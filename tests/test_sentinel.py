"""Redis through Sentinels (PRESENCE_REDIS_SENTINELS), on real processes: a master, two
replicas and three Sentinels, two ``presence serve`` replicas and ``presence watch``. The
master is SIGKILLed under load: every webhook is answered 200 or 503 in time; with
PRESENCE_REDIS_WAIT_REPLICAS=1 nothing answered 200 is lost (without it, the test measures
what is); deadlines set before the failover fire once after it; the feed says reset for a
cursor that saw what the failover lost. With both replicas stopped, webhooks get 503."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.processes import RedisSentinels, RedisServer, Service, redis_cli
from presence.events import ReachabilityEvent, parse_event
from presence.keys import Keyspace
from presence.model import Outcome, StoreUnavailable
from presence.settings import SettingsError, check_serve, load_settings
from presence.store.connections import open_store
from presence.store.sentinel import connection_options
from presence.twilio.samples import SERVICE_SID, reachability
from tests.consumer import MODES, Consumer
from tests.failover import (
    BEHIND_SECONDS,
    GRACE,
    FailoverRun,
    assert_every_reply_in_time,
    assert_offline_once,
    cut_off,
    deadline_identities,
    feed_cursor,
    feed_since,
    load_through_a_failover,
    lost_acknowledged,
    metric,
    resend_the_refused,
    set_deadlines,
    until_writes_are_acknowledged,
)
from tests.load import connect, deliver, deliver_acknowledged
from tests.support import AUTH_TOKEN, Watcher, make_store, wait_until
from tests.test_faults import assert_no_crash, client_session, ready, running

KEYS = Keyspace()

# -- settings ---------------------------------------------------------------------------------


def test_sentinels_are_host_port_pairs_and_need_no_redis_url() -> None:
    settings = load_settings(redis_sentinels="s1:26380, [::1]:26381,s3")
    assert settings.redis_sentinels == (("s1", 26380), ("::1", 26381), ("s3", 26379))
    assert settings.redis_sentinel_master == "mymaster"
    assert not settings.embedded
    check_serve(load_settings(redis_sentinels="s1", allow_unsigned_webhooks=True))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"redis_sentinels": "s1:port"}, "PRESENCE_REDIS_SENTINELS"),
        ({"redis_sentinels": "s1:0"}, "PRESENCE_REDIS_SENTINELS"),
        (
            {"redis_url": "redis://n1:7000", "redis_cluster": "true", "redis_sentinels": "s1"},
            "PRESENCE_REDIS_SENTINELS",
        ),
        ({"redis_url": "unix:///r.sock", "redis_sentinels": "s1"}, "PRESENCE_REDIS_SENTINELS"),
        ({"redis_wait_replicas": "-1"}, "PRESENCE_REDIS_WAIT_REPLICAS"),
        ({"redis_wait_timeout_ms": "0"}, "PRESENCE_REDIS_WAIT_TIMEOUT_MS"),
        ({"redis_wait_timeout_ms": "5001"}, "PRESENCE_REDIS_WAIT_TIMEOUT_MS"),
        ({"redis_sentinel_master": ""}, "PRESENCE_REDIS_SENTINEL_MASTER"),
    ],
)
def test_a_bad_high_availability_setting_is_named(settings: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**settings)


def test_waiting_for_replicas_needs_a_redis() -> None:
    with pytest.raises(SettingsError, match="PRESENCE_REDIS_WAIT_REPLICAS"):
        check_serve(load_settings(redis_wait_replicas=1))


def test_the_master_keeps_the_urls_password_database_and_tls_not_its_host() -> None:
    assert connection_options("rediss://user:pw@ignored:1/3?ssl_cert_reqs=none") == {
        "username": "user",
        "password": "pw",
        "db": 3,
        "ssl": True,
        "ssl_cert_reqs": "none",
    }
    assert connection_options("redis://:pw@ignored/2") == {"password": "pw", "db": 2}
    assert connection_options(None) == {}


# -- a failover under load ------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[RedisSentinels]:
    """A master, two replicas and three Sentinels of the test's own."""
    group = RedisSentinels(tmp_path / "redis")
    try:
        yield group.start()
    finally:
        group.stop()


def services_on(
    group: RedisSentinels, tmp_path: Path, grace: str = GRACE, **settings: str
) -> list[Service]:
    return [
        Service(
            tmp_path / f"serve-{n}.log",
            redis_sentinels=group.addresses,
            twilio_auth_token=AUTH_TOKEN,
            offline_grace_seconds=grace,
            **settings,
        )
        for n in range(2)
    ]


async def feed_of(master: RedisServer, identities: list[str]) -> Counter[tuple[str, str, str]]:
    """(identity, online, version) of each entry of the change feed on ``master``."""
    redis = Redis.from_url(master.url, decode_responses=True)
    found: Counter[tuple[str, str, str]] = Counter()
    try:
        buckets = {KEYS.place_of(SERVICE_SID, name)[0] for name in identities}
        for bucket in buckets:
            entries: Any = await redis.xrange(KEYS.feed(bucket, SERVICE_SID))
            for _, entry in entries:
                if entry["i"] in identities:
                    found[entry["i"], entry["o"], entry["v"]] += 1
    finally:
        await redis.aclose()
    return found


async def fail_over_under_load(
    tmp_path: Path, group: RedisSentinels, *, wait: bool, behind: bool
) -> None:
    """The scenario of both failover tests; with ``wait``, asserts that nothing answered
    200 is lost, without it reports (and, when the replicas were behind, asserts) the loss."""
    # A timeout under the time the replicas are behind: some webhooks meet it (503, their
    # write on the master only, lost with it, and applied again by Twilio's retry).
    settings = {"redis_wait_replicas": "1", "redis_wait_timeout_ms": "300"} if wait else {}
    services = services_on(group, tmp_path, **settings)
    old = group.master
    with running(*services) as started:
        async with (
            Watcher(redis_sentinels=group.addresses) as watcher,
            client_session() as session,
        ):
            await watcher.until_subscribed(old.url)
            await set_deadlines(session, started)
            # The feed has been read before: its epochs are on every replica.
            await feed_cursor(session, started[0])

            async def kill(run: FailoverRun) -> None:
                if behind:
                    await cut_off(old.port, [replica.pause for replica in group.replicas])
                    await asyncio.sleep(BEHIND_SECONDS)
                    # A feed reader sees what the replicas do not hold.
                    run.extra["cursor"] = await feed_cursor(session, started[0])
                run.killed_at = time.monotonic()
                await asyncio.to_thread(old.stop)  # SIGKILL
                for replica in group.replicas if behind else ():
                    replica.resume()

            run = await load_through_a_failover(session, started, kill)
            assert_every_reply_in_time(run)
            master = await asyncio.to_thread(group.wait_for_new_master, old.port)
            await until_writes_are_acknowledged(session, started)
            lost = await lost_acknowledged(session, started[0], run)
            name = f"Sentinel, WAIT {'1' if wait else '0'}, " + (
                f"replicas {BEHIND_SECONDS} s behind" if behind else "replicas in step"
            )
            print(run.summary(name, lost))
            if wait:
                assert lost == []
            elif behind:
                # What PRESENCE_REDIS_WAIT_REPLICAS is for: 200s the failover took back.
                assert lost

            # Twilio's retries of the 503s: each applied, or found done, once.
            outcomes = await resend_the_refused(session, started, run)
            assert set(outcomes) <= {"applied", "duplicate"}
            print(f"retried the 503s: {Counter(outcomes)}")

            # The deadlines set before the failover fire after it: once each on the new
            # master's feed, and presence watch (following the master) prints them; a
            # change published again carries the same version.
            deadlines = deadline_identities()

            async def all_fired() -> bool:
                fired = await feed_of(master, deadlines)
                return {i for i, online, _ in fired if online == "0"} == set(deadlines)

            await wait_until(all_fired, float(GRACE) + 15, "every deadline to fire")
            await asyncio.sleep(1.5)  # a second firing would come by now
            fired = await feed_of(master, deadlines)
            assert {key: n for key, n in fired.items() if key[1] == "0"} == {
                (name, "0", "2"): 1 for name in deadlines
            }

            await assert_offline_once(watcher, deadlines, version=2)

            if behind:
                page = await feed_since(session, started[1], run.extra["cursor"])
                assert (page["reset"], page.get("reason")) == (True, "lost")

            for service in started:
                assert await ready(session, service)
                failovers = await metric(session, service, "presence_redis_failovers_total")
                assert failovers >= 1
            if wait and behind:
                timeouts = [
                    await metric(
                        session, s, 'presence_redis_wait_timeouts_total{operation="webhook"}'
                    )
                    for s in started
                ]
                assert sum(timeouts) >= 1
        assert_no_crash(*started)


@pytest.mark.slow
@pytest.mark.parametrize("behind", [False, True], ids=["replicas-in-step", "replicas-behind"])
async def test_a_master_killed_under_load_with_wait_loses_no_acknowledged_webhook(
    tmp_path: Path, sentinels: RedisSentinels, behind: bool
) -> None:
    await fail_over_under_load(tmp_path, sentinels, wait=True, behind=behind)


@pytest.mark.slow
@pytest.mark.parametrize("behind", [False, True], ids=["replicas-in-step", "replicas-behind"])
async def test_without_wait_a_failover_loses_acknowledged_webhooks(
    tmp_path: Path, sentinels: RedisSentinels, behind: bool
) -> None:
    await fail_over_under_load(tmp_path, sentinels, wait=False, behind=behind)


# -- the change feed's consumers through a failover -------------------------------------------


async def flip(
    session: aiohttp.ClientSession, service: Service, name: str, event_id: int, online: bool
) -> None:
    """A connect or disconnect (offline at once), delivered as Twilio would: again after a
    503 (a failover under way)."""
    params = reachability(name, "E1", event_id, online, connected=online)
    await deliver_acknowledged(session, service, params)


async def listed(session: aiohttp.ClientSession, service: Service) -> set[str]:
    url = f"{service.url}/v1/services/{SERVICE_SID}/online"
    async with session.get(url, params={"limit": "1000"}) as response:
        assert response.status == 200, await response.text()
        page = await response.json()
    assert page["next_cursor"] is None
    return set(page["identities"])


@pytest.mark.slow
@pytest.mark.parametrize("behind", [False, True], ids=["replicas-in-step", "replicas-behind"])
async def test_a_failover_resets_exactly_the_consumers_that_saw_what_it_lost(
    tmp_path: Path, sentinels: RedisSentinels, behind: bool
) -> None:
    """Consumers reading the feed each of the four ways (tests/consumer.py), spread over both
    replicas of the service. Replicas in step when the master dies: nothing is lost, nobody
    is reset. Replicas cut off first: bob's connect, which every consumer received, is lost
    with the master: each consumer gets one reset (``lost``), and ends equal to ``/online``."""
    services = services_on(sentinels, tmp_path, grace="0")
    old = sentinels.master
    with running(*services) as started:
        async with client_session() as session:
            consumers = [
                Consumer(started[n % 2].url, SERVICE_SID, None, mode)
                for n, mode in enumerate(MODES)
            ]
            for consumer in consumers:
                await consumer.__aenter__()
            try:
                await flip(session, started[0], "alice", 1, True)
                for consumer in consumers:
                    await consumer.until({"alice"})
                # Every write so far is on both replicas.
                assert redis_cli(old.port, "WAIT", "2", "5000").strip() == "2"
                if behind:
                    await cut_off(old.port, [replica.pause for replica in sentinels.replicas])
                    await flip(session, started[1], "bob", 1, True)
                    for consumer in consumers:
                        await consumer.until({"alice", "bob"})
                await asyncio.to_thread(old.stop)  # SIGKILL
                for replica in sentinels.replicas if behind else ():
                    replica.resume()
                await asyncio.to_thread(sentinels.wait_for_new_master, old.port)
                await flip(session, started[0], "carol", 1, True)
                truth = await listed(session, started[1])
                assert truth == {"alice", "carol"}
                for consumer in consumers:
                    await consumer.until(truth)
            finally:
                for consumer in consumers:
                    await consumer.__aexit__(None, None, None)
        assert_no_crash(*started)
    for consumer in consumers:
        assert (consumer.mode, consumer.resets) == (consumer.mode, ["lost"] if behind else [])
        assert consumer.repeats == []


WAIT_TIMEOUT_MS = 1000
REFUSAL_BOUND = 2 * WAIT_TIMEOUT_MS / 1000 + 0.5
"""docs/redis.md, "High availability": with no replica to confirm, a webhook is answered 503
within twice PRESENCE_REDIS_WAIT_TIMEOUT_MS (the batch ahead of it, then its own) and the
time Redis takes."""


@pytest.mark.slow
async def test_with_both_replicas_stopped_webhooks_get_503_within_the_bound(
    tmp_path: Path, sentinels: RedisSentinels
) -> None:
    services = services_on(
        sentinels, tmp_path, redis_wait_replicas="1", redis_wait_timeout_ms=str(WAIT_TIMEOUT_MS)
    )
    with running(*services) as started:
        async with client_session() as session:
            # A deadline due while no replica can confirm its firing.
            await set_deadlines(session, started)
            for replica in sentinels.replicas:
                replica.stop()
            slots = asyncio.Semaphore(20)

            async def one(i: int) -> tuple[int | None, float]:
                await asyncio.sleep(i * 0.02)
                async with slots:
                    reply = await deliver(session, started[i % 2], connect(f"alone-{i}", "E1"))
                return reply.status, reply.elapsed

            began = time.monotonic()
            replies = await asyncio.gather(*(one(i) for i in range(150)))
            slowest = max(elapsed for _, elapsed in replies)
            print(
                f"\nboth replicas stopped, WAIT 1, timeout {WAIT_TIMEOUT_MS} ms: "
                f"{len(replies)} webhooks over {time.monotonic() - began:.1f} s, statuses "
                f"{Counter(status for status, _ in replies)}, slowest {slowest:.2f} s"
            )
            assert {status for status, _ in replies} == {503}
            assert slowest < REFUSAL_BOUND

            # The firing is published all the same, and counted as not confirmed.
            async def sweep_unconfirmed() -> bool:
                return (
                    await metric(
                        session,
                        started[0],
                        'presence_redis_wait_timeouts_total{operation="sweep"}',
                    )
                    + await metric(
                        session,
                        started[1],
                        'presence_redis_wait_timeouts_total{operation="sweep"}',
                    )
                    >= 1
                )

            await wait_until(sweep_unconfirmed, float(GRACE) + 10, "a firing not confirmed")

            # The replicas come back: Twilio's retries are answered 200, found done.
            for replica in sentinels.replicas:
                replica.start()
            await until_writes_are_acknowledged(session, started)
            retry = await deliver(session, started[0], connect("alone-0", "E1"))
            assert (retry.status, retry.outcome) == (200, "duplicate")
        assert_no_crash(*started)


@pytest.mark.slow
async def test_a_master_demoted_alive_is_left_for_the_new_one(sentinels: RedisSentinels) -> None:
    """A manual failover (SENTINEL FAILOVER) demotes the master to a replica, alive: the
    writes the service sends it are refused (READONLY, a 503, the script not run), and the
    service moves to the new master by itself, saying it saw a failover."""
    failovers: list[int] = []
    store = open_store(
        load_settings(redis_sentinels=sentinels.addresses, allow_unsigned_webhooks=True),
        on_failover=lambda: failovers.append(1),
    )
    old = sentinels.master
    try:
        assert (await store.apply_reachability(event("before", 1))).outcome is Outcome.APPLIED
        await asyncio.to_thread(sentinels.sentinels[0].ask, "failover", RedisSentinels.NAME)
        master = await asyncio.to_thread(sentinels.wait_for_new_master, old.port)
        await wait_until(lambda: redis_role(old) == "slave", 15, "the old master to follow")
        outcomes: list[str] = []

        async def applied() -> bool:
            try:
                result = await store.apply_reachability(event("after", 1))
            except StoreUnavailable:
                outcomes.append("503")
                return False
            outcomes.append(result.outcome.value)
            return True

        await wait_until(applied, 15, "a webhook applied on the new master")
        assert outcomes[-1] == "applied", outcomes
        on_master = make_store(Redis.from_url(master.url, decode_responses=True), None)
        for name in ("before", "after"):
            assert (await on_master.identity(SERVICE_SID, name)).online
        await on_master.close()
        assert failovers
    finally:
        await store.close()


def redis_role(server: RedisServer) -> str:
    """The server's role, or "" while it cannot say: reconfiguring a demoted master, a
    Sentinel kills its clients (CLIENT KILL TYPE normal), which may be this very call."""
    try:
        return redis_cli(server.port, "role").split()[0]
    except (subprocess.CalledProcessError, IndexError):
        return ""


def event(identity: str, event_id: int) -> ReachabilityEvent:
    parsed = parse_event(reachability(identity, "E1", event_id, True, connected=True).items())
    assert isinstance(parsed, ReachabilityEvent)
    return parsed
