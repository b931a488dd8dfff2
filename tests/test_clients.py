"""The two clients, Python (``clients/python``) and JavaScript (``clients/js``, in Node), each
through the same scenarios, against real ``presence serve`` replicas on a real redis-server:
connections cut, a replica killed and restarted, Redis restarted with its data and from older
data, a proxy that holds streams back, identity filters, a wrong token, and a rebalancing flap
wave. Every time, the view ends equal to ``/online``, its hooks alone tell the same, and no
change reaches a hook twice (tests/clients.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from presence.simulate.delivery import Timed, deliver, signed
from presence.simulate.flickers import FeedCount
from presence.simulate.storm import StormConfig, StormWebhook, plan_storm
from presence.twilio.samples import SERVICE_SID, reachability
from presence_client import PresenceRefused
from tests.clients import (
    TOKEN,
    Deployment,
    Follower,
    HttpProxy,
    Kind,
    NodeRefused,
    Options,
    check_exact,
    follower,
    node,
    repeated,
    replayed,
    resets,
    until_equal,
)
from tests.support import AUTH_TOKEN, wait_until

KINDS: list[Kind] = ["python", "node"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    found = Deployment(tmp_path)
    try:
        await found.start()
        yield found
    finally:
        await found.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Follower]]:
    """The followers a test starts, closed when it ends (failed or not)."""
    started: list[Follower] = []
    yield started
    for client in started:
        await client.close()


async def started(clients: list[Follower], kind: Kind, options: Options) -> Follower:
    client = await follower(kind, options)
    clients.append(client)
    return client


def delivered(client: Follower) -> list[tuple[str, int]]:
    """The changes the hook got from the feed (not resyncs), in order."""
    return [
        (event["identity"], event["version"])
        for event in client.events
        if event["kind"] == "change" and not event["resync"]
    ]


async def churn(deployment: Deployment, names: list[str], rounds: int) -> None:
    """Each name online, then offline, and so on, ``rounds`` changes each, about a hundred
    changes a second."""
    for turn in range(rounds):
        for name in names:
            await deployment.flip(name, turn % 2 == 0)
            await asyncio.sleep(0.01)


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_connections_cut_again_and_again_lose_nothing_and_repeat_nothing(
    kind: Kind, transport: str, deployment: Deployment, clients: list[Follower]
) -> None:
    await deployment.flip("alice", True)
    client = await started(clients, kind, Options(deployment.proxy.url, transport=transport))
    assert client.initial == {"alice"}
    names = [f"user-{n}" for n in range(8)]
    rounds = 11

    churning = asyncio.create_task(churn(deployment, names, rounds))
    while not churning.done():
        deployment.proxy.cut()
        await asyncio.sleep(0.1)
    await churning

    assert await check_exact(client, deployment) == {"alice", *names}
    assert resets(client) == []
    assert deployment.proxy.cuts >= 3, "connections were cut while changes came"
    # Every change came, each once, each identity's in order.
    for name in names:
        versions = [version for who, version in delivered(client) if who == name]
        assert versions == list(range(1, rounds + 1)), (name, versions)


async def test_a_replica_killed_and_restarted_is_followed_through_the_other(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    first, second = deployment.replicas
    client = await started(clients, kind, Options(deployment.proxy.url))
    names = [f"user-{n}" for n in range(4)]

    for replica in (first, second):
        churning = asyncio.create_task(churn(deployment, names, 10))
        await asyncio.sleep(0.2)
        replica.kill()  # SIGKILL: its streams and polls die with it, mid-change
        await churning
        await until_equal(client, deployment)
        replica.start()

    await churn(deployment, names, 1)
    assert await check_exact(client, deployment) == set(names)
    assert resets(client) == []
    assert len(delivered(client)) == 4 * 21


async def test_redis_restarted_with_its_data_resets_no_client(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    await deployment.flip("alice", True)
    client = await started(clients, kind, Options(deployment.proxy.url))
    await deployment.flip("bob", True)
    await until_equal(client, deployment)

    deployment.redis.shutdown()  # SIGTERM: as an operator restarts it
    deployment.redis.start()
    await deployment.flip("carol", True)
    await until_equal(client, deployment)
    deployment.redis.stop()  # SIGKILL: every write answered was fsynced (appendfsync always)
    deployment.redis.start()
    await deployment.flip("bob", False)

    assert await check_exact(client, deployment) == {"alice", "carol"}
    assert resets(client) == []


async def test_redis_back_from_older_data_resets_once_and_resyncs_only_what_differs(
    kind: Kind, deployment: Deployment, clients: list[Follower], tmp_path: Path
) -> None:
    await deployment.flip("alice", True)
    await deployment.flip("bob", True)
    client = await started(clients, kind, Options(deployment.proxy.url))
    # The stream may still be catching up, ahead of its replica's reader of the feed: the
    # loss must be seen all the same (the service checks such a stream's cursor once the
    # reader passes it).
    older = deployment.redis.copy_data(tmp_path / "older")
    await deployment.flip("carol", True)
    await deployment.flip("alice", False)
    await until_equal(client, deployment)
    seen = len(client.events)

    # A crash that lost the last writes, or a backup restored: carol and alice's offline are
    # gone, and the versions they had will be used again.
    deployment.redis.stop()
    deployment.redis.restore_data(older)
    deployment.redis.start()

    assert await check_exact(client, deployment) == {"alice", "bob"}
    assert client.events[seen:] == [
        {"kind": "reset", "reason": "lost"},
        {"kind": "change", "identity": "alice", "version": 1, "online": True, "resync": True},
        {"kind": "change", "identity": "carol", "version": 0, "online": False, "resync": True},
    ]
    await deployment.flip("carol", True)  # version 1 again: news after the reset
    assert await check_exact(client, deployment) == {"alice", "bob", "carol"}
    assert client.events[-1] == {
        "kind": "change",
        "identity": "carol",
        "version": 1,
        "online": True,
        "resync": False,
    }


RETENTION_SECONDS = 60  # the least PRESENCE_FEED_RETENTION_SECONDS takes


@pytest.mark.slow
async def test_a_cursor_past_the_retention_resets_each_client_once(
    tmp_path: Path, clients: list[Follower]
) -> None:
    """Both clients at once (the wait is a minute), one streaming and one long-polling: kept
    away from the service longer than the feed keeps changes, each is reset, and resyncs only
    what changed meanwhile."""
    retention = str(RETENTION_SECONDS)
    deployment = await Deployment(tmp_path, replicas=1, feed_retention_seconds=retention).start()
    try:
        await deployment.flip("alice", True)
        await deployment.flip("bob", True)
        url = deployment.proxy.url
        python = await started(clients, "python", Options(url, transport="stream"))
        node = await started(clients, "node", Options(url, transport="poll"))
        for client in (python, node):
            assert client.initial == {"alice", "bob"}
        deployment.proxy.refusing = True
        deployment.proxy.cut()
        away = time.monotonic()
        await deployment.flip("carol", True)
        await deployment.flip("alice", False)
        # Their cursors are older than the retention once it has passed (and its 1 s slack).
        await wait_until(lambda: time.monotonic() > away + RETENTION_SECONDS + 1, 90, "a minute")
        await deployment.flip("dave", True)
        deployment.proxy.refusing = False

        for client in (python, node):
            assert await check_exact(client, deployment) == {"bob", "carol", "dave"}
            assert client.events == [
                {"kind": "reset", "reason": "retention"},
                {"kind": "change", "identity": "carol", "version": 1, "online": True,
                 "resync": True},
                {"kind": "change", "identity": "dave", "version": 1, "online": True,
                 "resync": True},
                {"kind": "change", "identity": "alice", "version": 0, "online": False,
                 "resync": True},
            ], client.kind  # fmt: skip
    finally:
        await deployment.stop()


async def test_a_proxy_that_holds_streams_back_is_read_with_the_long_poll(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    holding = await HttpProxy(deployment.replicas[0].url, hold=True).start()
    try:
        await deployment.flip("alice", True)
        # A silence of 1 s (30 s by default) ends each held stream sooner.
        client = await started(clients, kind, Options(holding.url, silence_seconds=1.0))

        async def polling() -> bool:
            return await client.transport() == "poll"

        await wait_until(polling, 15, "the client to fall back to the long-poll")
        await deployment.flip("bob", True)
        await deployment.flip("alice", False)
        assert await check_exact(client, deployment) == {"bob"}
        assert holding.streams_held == 2
        assert resets(client) == []
    finally:
        await holding.close()


async def test_a_view_started_while_changes_come_takes_none_it_listed(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    """The listing shows changes made while it is read, and the feed from its cursor brings
    them again: only the version held tells them apart."""
    names = [f"user-{n:04d}" for n in range(3000)]
    churned = names[::5]
    # Each page of the listing is read 0.2 s late: hundreds of changes come meanwhile.
    slow = await HttpProxy(deployment.replicas[0].url, listing_delay=0.2).start()
    url = f"{deployment.replicas[0].url}/webhooks/sync"

    def webhook(at: float, name: str, event_id: int, online: bool) -> Timed:
        params = reachability(name, "E1", event_id, online, connected=online)
        return signed(at, params, {}, url=url, token=AUTH_TOKEN)

    async with aiohttp.ClientSession() as session:
        connects = [webhook(0.0, name, 1, True) for name in names]
        assert (await deliver(session, url, connects, 16)).tally.unexpected == 0
        # Each churned identity offline, online, offline, online: 2,400 changes over 4 s.
        flips = [
            webhook(n / 600, churned[n % 600], 2 + n // 600, n // 600 % 2 == 1) for n in range(2400)
        ]
        sending = asyncio.create_task(deliver(session, url, flips, 16))
        try:
            # The view starts while identities come back online (the second second).
            await asyncio.sleep(1.1)
            client = await started(clients, kind, Options(slow.url))
            assert not sending.done(), "the changes went on after the view started"
            assert (await sending).tally.unexpected == 0
            assert await check_exact(client, deployment) == set(names)
        finally:
            await slow.close()
    assert resets(client) == []


# -- what a view is asked for -----------------------------------------------------------------

ODD = "a/b c%:{x}"


async def test_a_filtered_view_holds_and_hears_of_its_identities_only(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    for name in ("alice", ODD, "carol"):
        await deployment.flip(name, True)
    wanted = {"alice", ODD, "dave"}
    client = await started(clients, kind, Options(deployment.proxy.url, identities=[*wanted]))
    assert client.initial == {"alice", ODD}
    for name, online in (("carol", False), ("dave", True), ("alice", False), ("erin", True)):
        await deployment.flip(name, online)

    async def caught_up() -> bool:
        return await client.online() == {ODD, "dave"}

    await wait_until(caught_up, 15, "the filtered view to catch up")
    assert {event["identity"] for event in client.events} == {"alice", "dave"}
    feed = f"/v1/services/{SERVICE_SID}/changes?"
    asked = [(method, path) for method, path in deployment.proxy.requests if feed in path]
    assert asked, "the feed was asked for through the proxy"
    assert all(method == "GET" and "identity=alice" in path for method, path in asked)
    assert replayed(client) == {ODD, "dave"}
    assert repeated(client) == []


async def test_a_long_filter_is_posted(
    kind: Kind, deployment: Deployment, clients: list[Follower]
) -> None:
    names = [f"a-rather-long-identity-name-{n:04d}" for n in range(300)]
    await deployment.flip(names[7], True)
    client = await started(clients, kind, Options(deployment.proxy.url, identities=names))
    await deployment.flip(names[8], True)
    await deployment.flip("outsider", True)

    async def caught_up() -> bool:
        return await client.online() == {names[7], names[8]}

    await wait_until(caught_up, 15, "the filtered view to catch up")
    assert [event["identity"] for event in client.events] == [names[8]]
    feed = f"/v1/services/{SERVICE_SID}/changes"
    assert [method for method, path in deployment.proxy.requests if path == feed] == ["POST"]


async def test_a_wrong_token_is_refused_at_start(kind: Kind, deployment: Deployment) -> None:
    with pytest.raises((PresenceRefused, NodeRefused), match="401"):
        await follower(kind, Options(deployment.proxy.url, token="wrong-" + TOKEN))


# -- the rebalancing flap ---------------------------------------------------------------------

FLAPPING = 2500
FLAP_GRACE_SECONDS = 5.0


@pytest.mark.slow
async def test_a_rebalancing_flap_wave_never_shows_a_flapping_identity_offline(
    kind: Kind, tmp_path: Path, clients: list[Follower]
) -> None:
    """Every identity disconnects and comes back on a new endpoint well within the grace,
    while the client's connections are cut twice: the service publishes no offline (checked
    first, on its own feed), and the view never shows one."""
    grace = f"{FLAP_GRACE_SECONDS:g}"
    deployment = await Deployment(tmp_path, replicas=1, offline_grace_seconds=grace).start()
    try:
        config = StormConfig(
            identities=FLAPPING,
            wave=3.0,
            reconnect_min=0.1,
            reconnect_max=0.6,
            grace=FLAP_GRACE_SECONDS,
            seed=21,
            service_sid=SERVICE_SID,
        )
        names = set(config.names())
        plan = plan_storm(config)
        url = f"{deployment.replicas[0].url}/webhooks/sync"

        def timed(webhooks: list[StormWebhook]) -> list[Timed]:
            return [signed(w.at, w.params, w.headers, url=url, token=AUTH_TOKEN) for w in webhooks]

        async with aiohttp.ClientSession() as session:
            connected = await deliver(session, url, timed(plan.connects), 16)
            assert connected.tally.unexpected == 0
            assert await deployment.listed() == names
            client = await started(clients, kind, Options(deployment.proxy.url))
            assert client.initial == names
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as api:
                async with api.get(
                    f"{deployment.replicas[0].url}/v1/services/{SERVICE_SID}/online",
                    params={"limit": "1"},
                ) as reply:
                    feed_cursor = (await reply.json())["feed_cursor"]
                feed = FeedCount(api, deployment.replicas[0].url, SERVICE_SID, feed_cursor)
                counting = asyncio.create_task(feed.run())
                storm = timed(plan.storm)
                for disconnect, reconnect in plan.reconnect_of.items():
                    storm[disconnect].newer = storm[reconnect]
                sending = asyncio.create_task(deliver(session, url, storm, 16))
                shown: list[int] = []
                while not sending.done():
                    shown.append(len(await client.online()))
                    if len(shown) in (3, 8):
                        deployment.proxy.cut()
                    await asyncio.sleep(0.2)
                stormed = await sending
                # An offline held past a reconnect would be published within the grace.
                settled = stormed.last + FLAP_GRACE_SECONDS + 2.0
                while time.monotonic() < settled:
                    shown.append(len(await client.online()))
                    await asyncio.sleep(0.2)
                counting.cancel()
                await asyncio.gather(counting, return_exceptions=True)
        assert stormed.tally.unexpected == 0
        # First the service: its own feed announced no offline, so any the view shows is its.
        assert feed.resets == []
        assert sum(feed.offline.values()) == 0
        assert deployment.proxy.cuts >= 2
        assert [e for e in client.events if e["kind"] == "change" and not e["online"]] == []
        assert set(shown) == {FLAPPING}, sorted(set(shown))
        assert await check_exact(client, deployment) == names
    finally:
        await deployment.stop()


# -- the examples of docs/clients.md ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_DOCS = ROOT / "docs" / "clients.md"
JS_MODULE = ROOT / "clients" / "js" / "presence.js"
DOCS_URL = "http://presence:8080"


def example(language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", CLIENTS_DOCS.read_text("utf-8"), re.DOTALL)
    assert found is not None, f"no {language} example in docs/clients.md"
    assert DOCS_URL in found.group(1)
    return found.group(1)


async def streaming(deployment: Deployment) -> bool:
    """Whether a stream of the feed is open on a replica (the view has read its snapshot)."""
    async with aiohttp.ClientSession() as session:
        for replica in deployment.replicas:
            async with session.get(f"{replica.url}/metrics") as response:
                if re.search(r"^presence_feed_streams_open [1-9]", await response.text(), re.M):
                    return True
    return False


async def test_the_python_example_of_the_docs_runs(deployment: Deployment) -> None:
    source = example("python").replace(DOCS_URL, deployment.proxy.url)
    namespace: dict[str, Any] = {"SID": SERVICE_SID, "TOKEN": TOKEN}
    exec("async def run():\n" + textwrap.indent(source, "    "), namespace)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        running = asyncio.create_task(namespace["run"]())
        try:
            await wait_until(lambda: streaming(deployment), 10, "the example to follow the feed")
            await deployment.flip("alice", True)
            await wait_until(lambda: "alice" in printed.getvalue(), 10, "the example's line")
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert printed.getvalue() == "alice online 1\n"


async def test_the_javascript_example_of_the_docs_runs(
    deployment: Deployment, tmp_path: Path
) -> None:
    source = example("js").replace(DOCS_URL, deployment.proxy.url)
    source = source.replace("'./presence.js'", json.dumps(str(JS_MODULE)))
    script = tmp_path / "example.mjs"
    script.write_text(f"const SID = '{SERVICE_SID}';\nconst TOKEN = '{TOKEN}';\n{source}", "utf-8")
    process = await asyncio.create_subprocess_exec(
        node(), str(script), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        await wait_until(lambda: streaming(deployment), 10, "the example to follow the feed")
        await deployment.flip("alice", True)
        line = await asyncio.wait_for(process.stdout.readline(), 15)
        if line == b"":
            pytest.fail("the example ended without a line")
    finally:
        process.kill()
        await process.wait()
    assert line.decode() == "alice true\n"
