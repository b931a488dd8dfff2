"""The Python client's own parts (``clients/python``): the Server-Sent Events parser, what a
view holds, what it imports; and, against a real ``presence serve``, what only the Python API
has: the iterator of changes, coroutine hooks, lookups with ``pending_offline``, a token that
stops being accepted. Its behaviour under faults is tests/test_clients.py's, beside the
JavaScript client's."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grimp
import pytest

from presence.twilio.samples import SERVICE_SID
from presence_client import (
    Change,
    EventParser,
    PresenceRefused,
    PresenceView,
    ServerSentEvent,
)
from presence_client.held import Held
from tests.clients import TOKEN, Deployment
from tests.support import wait_until

STREAM = (
    ": a comment\r\n"
    'id: c1\r\nevent: change\r\ndata: {"identity":"alice"}\r\n\r\n'
    "id: c2\n\n"
    'event: reset\rdata: {"reason":"lost"}\rid: c3\r\r'
    "data: one\ndata\ndata:  two\n\n"
)
EVENTS = [
    ServerSentEvent("change", '{"identity":"alice"}', "c1"),
    ServerSentEvent("message", None, "c2"),
    ServerSentEvent("reset", '{"reason":"lost"}', "c3"),
    ServerSentEvent("message", "one\n\n two", None),
]


def test_events_are_the_same_however_the_stream_is_cut() -> None:
    for size in range(1, len(STREAM) + 1):
        parser = EventParser()
        events = []
        for start in range(0, len(STREAM), size):
            events += parser.feed(STREAM[start : start + size])
        assert events == EVENTS, f"chunks of {size}"


def test_a_bom_is_skipped_an_id_with_nul_ignored_and_a_line_separator_kept() -> None:
    parser = EventParser()
    data = '{"identity":"a\u2028b\u0085c"}'
    assert parser.feed(f"\ufeffid: good\n\nid: b\0ad\ndata: {data}\n\n") == [
        ServerSentEvent("message", None, "good"),
        ServerSentEvent("message", data, None),
    ]


def test_a_change_is_taken_only_above_the_version_held() -> None:
    held = Held()
    assert held.take("alice", 3, True)
    assert not held.take("alice", 3, False)
    assert not held.take("alice", 2, False)
    assert held.online == {"alice"}
    assert held.take("alice", 4, False)
    assert held.online == set()


def test_a_snapshot_replaces_all_held_and_says_only_whose_state_it_changes() -> None:
    held = Held()
    held.take("alice", 5, True)
    held.take("bob", 2, True)
    held.take("carol", 9, False)
    moved = held.replace({"bob": 1, "dave": 1}, ["bob", "dave"])
    assert moved == [("dave", True, 1), ("alice", False, 0)]
    # The versions went with the reset: bob's version 2 may be another change now.
    assert held.take("bob", 2, False)
    assert held.take("carol", 1, True)


def test_the_client_imports_aiohttp_and_the_standard_library_only() -> None:
    graph = grimp.build_graph("presence_client", include_external_packages=True, cache_dir=None)
    imported = {
        other.split(".")[0]
        for module in graph.modules
        if module.startswith("presence_client")
        for other in graph.find_modules_directly_imported_by(module)
    }
    outside = imported - {"presence_client", "aiohttp"} - set(sys.stdlib_module_names)
    assert outside == set()


# -- against the service ----------------------------------------------------------------------


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    found = Deployment(tmp_path, replicas=1, offline_grace_seconds="30")
    try:
        await found.start()
        yield found
    finally:
        await found.stop()


async def test_changes_iterate_and_coroutine_hooks_are_awaited_in_order(
    deployment: Deployment,
) -> None:
    hooked: list[str] = []

    async def slow_hook(change: Change) -> None:
        await asyncio.sleep(0.05)  # the next change waits for this one
        hooked.append(change.identity)

    async with PresenceView(
        deployment.proxy.url, SERVICE_SID, token=TOKEN, on_change=slow_hook
    ) as view:
        changes = view.changes()
        for name in ("alice", "bob", "carol"):
            await deployment.flip(name, True)
        iterated = [(await anext(changes)).identity for _ in range(3)]
        await wait_until(lambda: len(hooked) == 3, 5, "the hook's three calls")
    assert iterated == hooked == ["alice", "bob", "carol"]
    assert [change async for change in changes] == []  # it ended with the view


async def test_a_hook_that_raises_is_logged_and_the_view_goes_on(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(change: Change) -> None:
        raise RuntimeError(f"no room for {change.identity}")

    async with PresenceView(
        deployment.proxy.url, SERVICE_SID, token=TOKEN, on_change=broken
    ) as view:
        await deployment.flip("alice", True)
        await deployment.flip("bob", True)
        await wait_until(lambda: view.online() == {"alice", "bob"}, 10, "both online")
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR] == [
        "a presence view hook raised"
    ] * 2


async def test_the_view_shows_published_presence_and_lookup_the_pending_offline(
    deployment: Deployment,
) -> None:
    await deployment.flip("alice", True)
    async with PresenceView(deployment.proxy.url, SERVICE_SID, token=TOKEN) as view:
        await deployment.flip("alice", False)  # inside her 30 s grace: still published online
        (alice, nobody) = await view.lookup(["alice", "nobody"])
        assert view.is_online("alice")
        assert view.online() == {"alice"}
        assert (alice.online, alice.pending_offline, alice.endpoints) == (True, True, ())
        assert (nobody.online, nobody.version) == (False, 0)
        assert view.version("alice") == alice.version == 1


async def test_a_token_no_longer_accepted_stops_the_view_with_its_error(
    deployment: Deployment,
) -> None:
    replica = deployment.replicas[0]
    view = PresenceView(deployment.proxy.url, SERVICE_SID, token=TOKEN)
    await view.start()
    try:
        changes = view.changes()
        replica.stop()
        replica.env["PRESENCE_API_TOKEN"] = "rotated-" + TOKEN
        replica.start()
        with pytest.raises(PresenceRefused, match="401"):
            await asyncio.wait_for(anext(changes), 30)
        assert isinstance(view.error, PresenceRefused)
        assert view.error.status == 401
    finally:
        await view.close()
    # A view refused at its start is closed, and says why.
    refused = PresenceView(replica.url, SERVICE_SID, token=TOKEN)
    with pytest.raises(PresenceRefused):
        await refused.start()
    assert isinstance(refused.error, PresenceRefused)


def test_a_filter_of_more_than_a_thousand_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="1 to 1000"):
        PresenceView("http://127.0.0.1:1", SERVICE_SID, identities=[f"u{n}" for n in range(1001)])
