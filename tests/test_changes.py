"""The change feed, ``GET``/``POST /v1/services/{sid}/changes``, as a consumer uses it: on a
real HTTP server, on a real Redis, the embedded store and a Redis Cluster.

A consumer that restarts, loses its connection or moves to another replica resumes from its
cursor and gets every change after it, each once, each identity's in version order; when that
is impossible it is told ``reset``, never left with a silent gap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp_sse import EventSourceResponse
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.feed import hub as feed_hub
from presence.feed.cursor import FeedCursor, Position
from presence.keys import Keyspace
from presence.metrics import Metrics
from presence.store.redis import RedisStore
from presence.store.scripts import Client
from presence.twilio.samples import SERVICE_SID, reachability
from presence.web import changes as changes_api
from tests.support import EventStream, RunningApp, wait_until

Start = Callable[..., Awaitable[RunningApp]]

API_TOKEN = "feed-token"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
FEED = f"/v1/services/{SERVICE_SID}/changes"


def store_on(client: Client, **options: Any) -> RedisStore:
    """A store on ``client`` going by the Redis server's clock (the feed's clock)."""
    return RedisStore(client, Keyspace(), offline_grace_ms=0, endpoint_ttl_ms=0, **options)


@pytest.fixture
async def feed(start_service: Start, backend: Client) -> RunningApp:
    """The service, offline at once (grace 0), on a real Redis, the embedded store or a
    Redis Cluster."""
    return await start_service(store=store_on(backend), api_token=API_TOKEN)


async def get(service: RunningApp, path: str, **params: Any) -> dict[str, Any]:
    response = await service.client.get(path, params=params, headers=BEARER)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def flip(service: RunningApp, name: str, event_id: int, online: bool) -> None:
    """A connect (online) or disconnect: with a grace of 0, one change each."""
    params = reachability(name, "E1", event_id, online, connected=online)
    assert await service.status_of(params) == "applied"


async def read_all(
    service: RunningApp, since: str, count: int, within: float = 10.0, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Follows the JSON pages from ``since`` until ``count`` changes came; returns them and
    the last cursor."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    cursor = since
    while len(found) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} changes"
        page = await get(service, FEED, since=cursor, wait="1", **params)
        assert page["reset"] is False, page
        found += page["changes"]
        cursor = page["cursor"]
    return found, cursor


def versions(changes: list[dict[str, Any]]) -> dict[str, list[tuple[int, bool]]]:
    by_identity: dict[str, list[tuple[int, bool]]] = {}
    for change in changes:
        by_identity.setdefault(change["identity"], []).append((change["version"], change["online"]))
    return by_identity


def stream_url(service: RunningApp, query: str = "") -> str:
    return str(service.client.make_url(FEED)) + query


# -- pages ------------------------------------------------------------------------------------


async def test_pages_hold_every_change_after_the_cursor_once_in_order(feed: RunningApp) -> None:
    start = (await get(feed, FEED))["cursor"]
    names = [f"user-{n}" for n in range(6)]
    for name in names:
        await flip(feed, name, 1, True)
    for name in names:
        await flip(feed, name, 2, False)

    found, cursor = await read_all(feed, start, 12, limit="5")

    assert len(found) == 12
    assert versions(found) == {name: [(1, True), (2, False)] for name in names}
    assert (await get(feed, FEED, since=cursor))["changes"] == []


async def test_a_page_is_the_json_published_on_pub_sub(feed: RunningApp) -> None:
    start = (await get(feed, FEED))["cursor"]
    response = await feed.post_signed(reachability("alice", "E1", 7, True, connected=True))
    assert response.status == 200

    (change,), _ = await read_all(feed, start, 1)

    assert change == {
        "service_sid": SERVICE_SID,
        "identity": "alice",
        "online": True,
        "reason": "connected",
        "event_id": 7,
        "version": 1,
        "changed_at": change["changed_at"],
    }


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_the_feed_holds_each_message_byte_for_byte_as_pub_sub_carried_it(
    backend: Client,
) -> None:
    """The feed keeps a change's fields and writes its message again: the same bytes as
    the message published, for changes of webhooks and of the sweeper alike, whatever the
    identity's characters."""
    store = RedisStore(backend, Keyspace(), offline_grace_ms=50, endpoint_ttl_ms=0)
    names = [
        "alice",
        "a/b",
        "back\\slash/",
        'quo"te',
        "tab\t",
        "é🙂",
        "\u007f",
        "del\x7f",
        "ctl\x01\x1f",
        "line\nfeed",
        "lit\\u007f",
    ]
    assert isinstance(backend, Redis)
    pubsub = backend.pubsub()
    await pubsub.subscribe("presence:changes")
    start = (await store.read_feed(SERVICE_SID, None, limit=1)).cursor
    for n, name in enumerate(names):
        for params in (
            reachability(name, "E1", 2 * n + 1, True, connected=True),
            reachability(name, "E1", 2 * n + 2, False, connected=False),
        ):
            event = parse_event(params.items())
            assert isinstance(event, ReachabilityEvent)
            await store.apply_reachability(event)
    swept: list[str] = []

    async def all_offline() -> bool:
        swept.extend(c.identity for c in (await store.sweep(1024)).changes)
        return len(swept) == len(names)

    await wait_until(all_offline, 10, "every offline deadline fired")
    published: list[str] = []
    deadline = time.monotonic() + 10
    while len(published) < 2 * len(names):
        assert time.monotonic() < deadline, "pub/sub fell silent"
        # None is also a subscription confirmation, skipped: only the deadline counts.
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            published.append(message["data"])
    await pubsub.aclose()
    read = await store.read_feed(SERVICE_SID, start, limit=100)

    by_identity = {
        name: [m for m in published if json.loads(m)["identity"] == name] for name in names
    }
    for name in names:
        fed = [e.message for e in read.entries if e.identity == name]
        assert fed == by_identity[name], name
        assert [json.loads(m)["reason"] for m in fed] == ["connected", "disconnected"]
    await store.close()


async def test_a_long_poll_answers_as_soon_as_a_change_comes(feed: RunningApp) -> None:
    start = (await get(feed, FEED))["cursor"]
    started = time.monotonic()
    poll = asyncio.create_task(get(feed, FEED, since=start, wait="20"))
    await asyncio.sleep(0.3)
    assert not poll.done()

    await flip(feed, "alice", 1, True)
    page = await asyncio.wait_for(poll, 5)

    assert [c["identity"] for c in page["changes"]] == ["alice"]
    assert time.monotonic() - started < 5


async def test_a_long_poll_with_nothing_new_answers_after_its_wait(feed: RunningApp) -> None:
    started = time.monotonic()
    page = await get(feed, FEED, wait="0.5")
    assert page["changes"] == []
    assert page["reset"] is False
    assert 0.45 < time.monotonic() - started < 5


async def test_only_the_identities_asked_for_are_followed(feed: RunningApp) -> None:
    start = (await get(feed, FEED))["cursor"]
    odd = "a/b c%:{x}"
    for n, name in enumerate(["alice", odd, "carol", "dave"]):
        await flip(feed, name, n + 1, True)
    await flip(feed, odd, 10, False)

    by_query, _ = await read_all(feed, start, 3, identity=["alice", odd])
    response = await feed.client.post(
        FEED, params={"since": start, "wait": "1"}, json={"identities": ["carol"]}, headers=BEARER
    )
    by_body = (await response.json())["changes"]
    async with EventStream(stream_url(feed, f"?since={start}&identity=dave"), BEARER) as stream:
        await stream.wait_for(1)
        await asyncio.sleep(0.2)

    assert versions(by_query) == {"alice": [(1, True)], odd: [(1, True), (2, False)]}
    assert [c["identity"] for c in by_body] == ["carol"]
    assert [c["identity"] for c in stream.changes()] == ["dave"]


# -- streams ----------------------------------------------------------------------------------


async def test_a_stream_killed_midway_resumes_from_its_last_event_id_missing_nothing(
    feed: RunningApp,
) -> None:
    """Every change exactly once, each identity's in version order, across a connection
    lost mid-stream while more changes were made."""
    names = [f"user-{n}" for n in range(5)]
    # A stream is subscribed once its headers are in: it starts from there.
    async with EventStream(stream_url(feed), BEARER) as first:
        for event_id, name in enumerate(names, start=1):
            await flip(feed, name, event_id, True)
        await first.wait_for(3)
    received = first.changes()
    last_id = [e.id for e in first.events][-1]
    assert last_id is not None
    # While the consumer is away: each goes offline and back.
    for event_id, name in enumerate(names, start=10):
        await flip(feed, name, event_id, False)
        await flip(feed, name, event_id + 100, True)

    async with EventStream(stream_url(feed), BEARER | {"Last-Event-ID": last_id}) as second:
        await wait_until(
            lambda: len(received) + len(second.changes()) >= 15, 10, "every change once"
        )
        await asyncio.sleep(0.3)  # a duplicate would have come by now
        received += second.changes()

    assert len(received) == 15
    assert versions(received) == {name: [(1, True), (2, False), (3, True)] for name in names}
    assert all(e.event == "change" and e.id for e in second.events)


async def test_since_starts_a_stream_and_last_event_id_overrides_it(feed: RunningApp) -> None:
    start = (await get(feed, FEED))["cursor"]
    await flip(feed, "alice", 1, True)
    _, middle = await read_all(feed, start, 1)
    await flip(feed, "bob", 1, True)

    async with EventStream(stream_url(feed, f"?since={start}"), BEARER) as by_since:
        await by_since.wait_for(2)
    async with EventStream(
        stream_url(feed, f"?since={start}"), BEARER | {"Last-Event-ID": middle}
    ) as by_header:
        await by_header.wait_for(1)
        await asyncio.sleep(0.2)

    assert [c["identity"] for c in by_since.changes()] == ["alice", "bob"]
    assert [c["identity"] for c in by_header.changes()] == ["bob"]


async def test_a_cursor_resumes_on_another_replica(start_service: Start, redis: Redis) -> None:
    first = await start_service(api_token=API_TOKEN, offline_grace_seconds=0)
    second = await start_service(api_token=API_TOKEN, offline_grace_seconds=0)
    start = (await get(first, FEED))["cursor"]
    await flip(first, "alice", 1, True)
    (_,), cursor = await read_all(first, start, 1)
    await flip(second, "alice", 2, False)
    await flip(first, "bob", 1, True)

    found, _ = await read_all(second, cursor, 2)

    # Changes of different identities (in different buckets) within one millisecond may
    # come in either order: only each identity's are ordered.
    assert sorted((c["identity"], c["version"]) for c in found) == [("alice", 2), ("bob", 1)]


async def test_many_streams_of_one_service_share_one_reader_per_process(
    feed: RunningApp, redis: Redis, backend: Client
) -> None:
    if not isinstance(backend, Redis) or "fake" in type(backend).__module__:
        pytest.skip("counted with INFO commandstats of the suite's own Redis")
    stream_count = 30

    async def xreads() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_xread", {}).get("calls", 0))

    streams = [EventStream(stream_url(feed), BEARER) for _ in range(stream_count)]
    for stream in streams:
        await stream.__aenter__()
    try:
        before = await xreads()
        for event_id in range(1, 11):
            await flip(feed, "alice", event_id, event_id % 2 == 1)
        for stream in streams:
            await stream.wait_for(10)
        reads = await xreads() - before
    finally:
        for stream in streams:
            await stream.close()

    # One reader for the 30 streams: its reads follow the changes, not the clients.
    assert reads < 3 * 10 + 10, reads
    assert all(len(s.changes()) == 10 for s in streams)


async def test_a_stream_is_open_at_once_not_at_its_first_heartbeat(feed: RunningApp) -> None:
    """Its status and headers (and a comment) come before any change or heartbeat: an
    EventSource is told it is open, and a client timing the stream's first bytes does not
    take a quiet service for a dead stream."""
    started = time.monotonic()
    async with EventStream(stream_url(feed), BEARER) as stream:
        assert stream.status == 200
        await wait_until(lambda: ": open" in stream.comments, 2, "the opening comment")
    assert time.monotonic() - started < changes_api.HEARTBEAT_SECONDS / 2
    assert stream.events == []


async def test_changes_queued_together_go_in_one_write_each_once_in_order(
    feed: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream sends the changes waiting for it in one write, not a write each; its client
    still gets every one once, in order, each with its own ID."""
    writes: list[int] = []
    send = changes_api._Sender._send

    async def counted(sender: Any, events: str) -> None:
        writes.append(events.count("event: change\r\n"))
        await send(sender, events)

    monkeypatch.setattr(changes_api._Sender, "_send", counted)
    names = [f"burst-{n:03d}" for n in range(100)]
    async with EventStream(stream_url(feed), BEARER) as stream:
        await asyncio.gather(*(flip(feed, name, 1, True) for name in names))
        await stream.wait_for(len(names))
        await asyncio.sleep(0.3)  # a change sent twice would have come by now
    received = stream.changes()
    assert sorted(change["identity"] for change in received) == names
    ids = [event.id for event in stream.events]
    assert len(set(ids)) == len(ids) == len(names)
    positions = [FeedCursor.decode(i).position for i in ids if i is not None]
    assert positions == sorted(positions)
    assert sum(writes) == len(names)
    assert len(writes) < len(names), "every change had a write of its own"


@pytest.mark.parametrize(
    "data",
    ['{"identity":"alice","version":3}', "two\nlines", "three\r\nlines\rhere", "", "end\n"],
)
async def test_an_event_is_framed_byte_for_byte_as_aiohttp_sse_frames_it(
    data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    framed: list[bytes] = []

    async def write(chunk: bytes) -> None:
        framed.append(chunk)

    stream = EventSourceResponse()
    monkeypatch.setattr(stream, "write", write)
    await stream.send(data, id="c1", event="change")

    assert changes_api._event("change", "c1", data).encode() == b"".join(framed)


async def test_a_stream_keeps_itself_alive_and_its_cursor_moving(
    feed: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comment line keeps proxies from closing an idle stream; a stream filtered to quiet
    identities still gets its cursor moved on (an ``id:`` without an event)."""
    monkeypatch.setattr(changes_api, "HEARTBEAT_SECONDS", 0.3)
    async with EventStream(stream_url(feed, "?identity=quiet"), BEARER) as stream:
        await flip(feed, "chatty", 1, True)
        await wait_until(
            lambda: ": ping" in stream.comments and bool(stream.ids), 5, "a ping, an id"
        )

    assert stream.events == []
    # The cursor moved past chatty's change: resuming from it, nothing comes.
    page = await get(feed, FEED, since=stream.ids[-1], identity="chatty")
    assert page["changes"] == []


# -- the snapshot -----------------------------------------------------------------------------


@pytest.mark.parametrize("versions", [False, True], ids=["in-order", "above-versions"])
async def test_the_listing_plus_the_feed_from_its_cursor_is_the_current_state(
    feed: RunningApp, versions: bool
) -> None:
    """Applied in order, or (``versions=true``) each change only above the version held, as
    the docs tell a consumer: the listing's changes made while it was walked are in the
    listing already, and the feed brings them again."""
    names = [f"user-{n:03d}" for n in range(120)]
    for name in names[:80]:
        await flip(feed, name, 1, True)
    held: dict[str, tuple[int, bool]] = {}
    feed_cursors: set[str] = set()
    cursor: str | None = None
    turn = 0
    while True:
        params = {"limit": "15", "versions": str(versions).lower()}
        page = await get(
            feed,
            f"/v1/services/{SERVICE_SID}/online",
            **params,
            **({"cursor": cursor} if cursor else {}),
        )
        for item in page["identities"]:
            if versions:
                held[item["identity"]] = (item["version"], True)
            else:
                held[item] = (0, True)
        feed_cursors.add(page["feed_cursor"])
        # While the listing is walked: some come online, some go offline, some flap.
        for name in names[80 + 5 * turn : 85 + 5 * turn]:
            await flip(feed, name, 1, True)
        for name in names[7 * turn : 7 * turn + 3]:
            await flip(feed, name, 2, False)
        await flip(feed, names[7 * turn + 4], 2, False)
        await flip(feed, names[7 * turn + 4], 3, True)
        turn += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Every change after the listing's cursor.
    (feed_cursor,) = feed_cursors
    page = {"changes": [None]}
    since = feed_cursor
    while page["changes"]:
        page = await get(feed, FEED, since=since, limit="1000", wait="0.2")
        assert page["reset"] is False
        for change in page["changes"]:
            name, version = change["identity"], change["version"]
            if not versions or version > held.get(name, (0, False))[0]:
                held[name] = (version, change["online"])
        since = page["cursor"]
    rebuilt = {name for name, (_, online) in held.items() if online}

    truth = await get(feed, f"/v1/services/{SERVICE_SID}/online", limit="1000")
    assert rebuilt == set(truth["identities"])
    assert len(rebuilt) > 80


# -- resets -----------------------------------------------------------------------------------


async def test_a_cursor_from_before_a_redis_restart_without_persistence_is_reset(
    start_service: Start, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        service = await start_service(
            redis_url=redis.url, api_token=API_TOKEN, offline_grace_seconds=0
        )
        start = (await get(service, FEED))["cursor"]
        await flip(service, "alice", 1, True)
        redis.stop()
        redis.start()  # empty: nothing was kept

        page = await get(service, FEED, since=start)
        async with EventStream(stream_url(service), BEARER | {"Last-Event-ID": start}) as stream:
            await stream.wait_for(1)
            await flip(service, "bob", 1, True)
            await stream.wait_for(2)
    finally:
        redis.stop()

    assert page["reset"] is True
    assert page["reason"] == "lost"
    assert page["changes"] == []
    reset, after = stream.events[:2]
    assert reset.event == "reset"
    assert json.loads(reset.data)["reason"] == "lost"
    assert reset.id is not None
    # ... and the stream goes on from now.
    assert (after.event, json.loads(after.data)["identity"]) == ("change", "bob")


async def test_a_cursor_older_than_the_retention_is_reset(feed: RunningApp) -> None:
    now = FeedCursor.decode((await get(feed, FEED))["cursor"])
    old = replace(now, position=Position(now.position.ms - 86_400_000 - 60_000, 0, 0))

    page = await get(feed, FEED, since=old.encode())

    assert (page["reset"], page["reason"], page["changes"]) == (True, "retention", [])
    assert FeedCursor.decode(page["cursor"]).position >= now.position


async def test_a_cursor_of_another_deployment_is_reset(feed: RunningApp) -> None:
    now = FeedCursor.decode((await get(feed, FEED))["cursor"])
    assert now.history is not None
    foreign = replace(now, history=now.history ^ 1)

    page = await get(feed, FEED, since=foreign.encode())

    assert (page["reset"], page["reason"]) == (True, "lost")


async def test_a_stream_whose_redis_goes_away_after_it_began_ends_cleanly(
    start_service: Start, private_redis: RedisServer
) -> None:
    """Once a stream's 200 is sent, a Redis error can only end it: the client sees a well-formed
    stream end (never a second HTTP reply written into it), from which it resumes by cursor as
    after any lost connection."""
    service = await start_service(
        redis_url=private_redis.url, api_token=API_TOKEN, offline_grace_seconds=0
    )
    start = (await get(service, FEED))["cursor"]
    await flip(service, "alice", 1, True)
    # This process's reader of the service exists: a new stream is subscribed without a read
    # of Redis, so its 200 goes out before its catch-up finds Redis gone.
    async with EventStream(stream_url(service), BEARER):
        private_redis.stop()
        response = await service.client.get(
            FEED, headers=BEARER | {"Accept": "text/event-stream", "Last-Event-ID": start}
        )
        assert response.status == 200
        # Ended by the service: the client reads to the stream's end, without a parse error.
        body = await asyncio.wait_for(response.content.read(), 15)

    assert b"HTTP/1.1" not in body
    assert b"event: change" not in body


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"since": "not-a-cursor"}, "invalid_cursor"),
        ({"since": "AQAAAaIy"}, "invalid_cursor"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "ten"}, "invalid_limit"),
        ({"wait": "-1"}, "invalid_wait"),
        ({"wait": "31"}, "invalid_wait"),
        ({"wait": "nan"}, "invalid_wait"),
        ({"wait": "soon"}, "invalid_wait"),
        ({"identity": ""}, "invalid_identity"),
        ({"identity": "x" * 1025}, "invalid_identity"),
    ],
)
async def test_a_bad_query_is_a_400(feed: RunningApp, query: dict[str, str], code: str) -> None:
    response = await feed.client.get(FEED, params=query, headers=BEARER)
    assert response.status == 400
    assert (await response.json())["error"] == code


async def test_bad_filters_bodies_and_sids_are_400s(feed: RunningApp) -> None:
    too_many = {"identities": [f"u{n}" for n in range(1001)]}
    for body in (b"{", b'{"identities": []}', json.dumps(too_many).encode()):
        response = await feed.client.post(FEED, data=body, headers=BEARER)
        assert response.status == 400
        assert (await response.json())["error"] in ("invalid_body", "invalid_identity")
    bad_sid = await feed.client.get("/v1/services/IS123/changes", headers=BEARER)
    assert (await bad_sid.json())["error"] == "invalid_service_sid"
    bad_header = await feed.client.get(
        FEED, headers=BEARER | {"Accept": "text/event-stream", "Last-Event-ID": "garbage"}
    )
    assert bad_header.status == 400
    assert (await bad_header.json())["error"] == "invalid_cursor"


async def test_without_the_token_the_feed_is_a_401(feed: RunningApp) -> None:
    for headers in ({}, {"Accept": "text/event-stream"}, {"Authorization": "Bearer nope"}):
        response = await feed.client.get(FEED, headers=headers)
        assert response.status == 401


async def test_streams_beyond_the_limit_get_503_with_retry_after(
    start_service: Start, redis: Redis
) -> None:
    service = await start_service(api_token=API_TOKEN, max_streams=2)
    url = stream_url(service)
    async with EventStream(url, BEARER) as one, EventStream(url, BEARER) as two:
        assert (one.status, two.status) == (200, 200)
        async with EventStream(url, BEARER) as three:
            assert three.status == 503
            assert three.response is not None
            assert three.response.headers["Retry-After"] == "5"
            assert (await three.response.json())["error"] == "too_many_streams"

    # Closed streams give their places back (a lost connection is noticed within a second).
    async def accepted() -> bool:
        async with EventStream(url, BEARER) as again:
            return again.status == 200

    await wait_until(accepted, 5, "a place for a new stream")


# -- the hub ----------------------------------------------------------------------------------


@pytest.fixture
async def store(redis: Redis) -> RedisStore:
    return store_on(redis)


async def apply(store: RedisStore, name: str, event_id: int, online: bool) -> None:
    event = parse_event(reachability(name, "E1", event_id, online, connected=online).items())
    assert isinstance(event, ReachabilityEvent)
    assert (await store.apply_reachability(event)).outcome == "applied"


async def test_a_subscriber_too_slow_to_read_is_dropped_and_the_others_go_on(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads of one change at a time: the fast subscriber drains its queue between them.
    monkeypatch.setattr(feed_hub, "READ_LIMIT", 1)
    monkeypatch.setattr(feed_hub, "QUEUE_SIZE", 5)
    metrics = Metrics()
    hub = feed_hub.FeedHub(store, metrics, max_streams=10, wakeups=store.published)
    try:
        slow = await hub.subscribe(SERVICE_SID)
        fast = await hub.subscribe(SERVICE_SID)
        taken: list[Any] = []

        async def take() -> None:
            while True:
                if (delivery := await fast.get(10)) is not None:
                    taken.append(delivery)

        taker = asyncio.create_task(take())
        for event_id in range(1, 9):
            await apply(store, "alice", event_id, event_id % 2 == 1)
        await wait_until(lambda: len(taken) >= 8, 5, "the fast subscriber's 8 changes")
        assert len(taken) == 8, taken
        taker.cancel()
    finally:
        await hub.close()

    queued = list(slow.pending)
    assert len(queued) == 6
    assert queued[-1] == feed_hub.Closed("too slow")
    assert metrics.registry.get_sample_value("presence_feed_clients_dropped_total") == 1
    assert hub.open == 1  # the fast one; the slow one's place was given back


async def test_closing_the_hub_ends_every_stream(store: RedisStore) -> None:
    hub = feed_hub.FeedHub(store, Metrics(), max_streams=10)
    subscribers = [await hub.subscribe(SERVICE_SID) for _ in range(3)]

    await hub.close()

    assert [list(s.pending) for s in subscribers] == [[feed_hub.Closed("shutdown")]] * 3
    with pytest.raises(feed_hub.TooManyStreams, match="stopping"):
        await hub.subscribe(SERVICE_SID)
