"""The key layout: one hash slot per script call, even buckets, cursors, Lua's clock format."""

from __future__ import annotations

import base64
import random
import struct
from collections import Counter

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from presence.events import ReachabilityEvent, parse_event
from presence.feed.cursor import MAX_SEQ, FeedCursor, InvalidFeedCursor, Position
from presence.keys import BUCKETS, PAGES, Keyspace, page_member
from presence.store import resp
from presence.store.listing import InvalidListingCursor, ListingCursor
from presence.store.scripts import source
from presence.timestamps import iso_from_ms
from presence.twilio.samples import SERVICE_SID, collection_event, reachability
from tests.support import make_store


@pytest.mark.parametrize("identity", ["alice", "a{b}c", "{", "}", "x:{y}:z", "é" * 300])
def test_every_key_of_an_identity_script_is_in_one_slot(identity: str) -> None:
    store = make_store(Redis(), None)
    event = parse_event(reachability(identity, "EP1", 1, True, connected=True).items())
    assert isinstance(event, ReachabilityEvent)
    bucket, page = store.keys.place_of(SERVICE_SID, identity)
    calls = [
        store.pages.event_call(event),
        store.pages.fire_call(page_member(SERVICE_SID, page), bucket),
        *(call for call, _ in store.reads.read_calls(SERVICE_SID, [identity, identity + "-2"])),
    ]

    for call in calls:
        assert len({key_slot(key.encode()) for key in call.keys}) == 1
    # A read groups identities by bucket: every page of the bucket shares its slot.
    same_bucket = [
        n
        for n in (f"u{i}" for i in range(2000))
        if store.keys.place_of(SERVICE_SID, n)[0] == bucket
    ]
    ((read, positions),) = store.reads.read_calls(SERVICE_SID, same_bucket)
    assert len({key_slot(key.encode()) for key in read.keys}) == 1
    assert positions == list(range(len(same_bucket)))


def test_a_lookups_calls_are_packed_as_their_commands_are() -> None:
    """The packed form of each read call is what its keys and names would be packed as, for
    names of any script, read again from the pages kept packed or not."""
    store = make_store(Redis(), None)
    names = [f"u{i}" for i in range(3000)] + ["é" * 300, "日本", "a{b}c", "x y"]
    for _ in range(2):  # the second time, every page's keys come packed already
        for call, _ in store.reads.read_calls(SERVICE_SID, names):
            assert call.packed == resp.pack(call.script.command(call.keys, call.args))


def test_every_key_of_a_record_script_is_in_one_slot() -> None:
    keyspace = Keyspace("app")
    event = parse_event(collection_event("list_item_added").items())
    assert event is not None
    bucket = keyspace.bucket_of(getattr(event, "subject_sid"))  # noqa: B009
    keys = [keyspace.token(bucket, "tok{en}"), keyspace.seen(bucket, "ES" + "2" * 32)]

    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_identities_spread_evenly_over_the_buckets() -> None:
    counts = Counter(Keyspace.bucket_of(SERVICE_SID + f"user-{n}") for n in range(20_000))

    assert len(counts) == BUCKETS
    expected = 20_000 / BUCKETS
    assert min(counts.values()) > expected * 0.7
    assert max(counts.values()) < expected * 1.3


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "has space", "tab\t"])
def test_a_prefix_that_would_break_hash_tags_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="must"):
        Keyspace(prefix)


FEED = FeedCursor(Position(1_796_000_000_000, 3, 5), 2**64 - 7, snapshot=frozenset(["ab" * 20]))


@pytest.mark.parametrize(
    "cursor",
    [
        FEED,
        FeedCursor(Position(0, 0, 0), 0),
        FeedCursor(Position(2**63, MAX_SEQ, BUCKETS - 1), 12345, frozenset({0, 77, BUCKETS - 1})),
        FeedCursor(Position(5, 1, 2), 1, frozenset(), frozenset()),
        FeedCursor(Position(5, 1, 2), 1, None, frozenset(["0" * 40, "f" * 40])),
    ],
)
def test_feed_cursors_round_trip_url_safe(cursor: FeedCursor) -> None:
    text = cursor.encode()
    assert FeedCursor.decode(text) == cursor
    assert text.replace("-", "").replace("_", "").isalnum()


def test_a_feed_cursor_of_the_release_before_decodes_without_a_history() -> None:
    """Its history cannot be checked: the feed answers it with a reset (``lost``), not a 400."""
    old = (
        base64.urlsafe_b64encode(
            struct.pack(">BQQB8sB", 1, 1_796_000_000_000, 3, 5, b"8 bytes!", 1)
            + struct.pack(">20sQ", bytes.fromhex("ab" * 20), 7)
        )
        .decode()
        .rstrip("=")
    )
    assert FeedCursor.decode(old) == FeedCursor(Position(1_796_000_000_000, 3, 5), None)


def raw_cursor(*fields: int, tail: bytes = b"") -> str:
    """A cursor's bytes as the service would encode them: version, ms, seq, bucket, history,
    flags, then ``tail``."""
    return base64.urlsafe_b64encode(struct.pack(">BQQBQB", *fields) + tail).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!",
        "é",
        FEED.encode()[:-2],
        FEED.encode() + "AA",
        # An unknown version, an unknown flag, a bucket out of range.
        base64.urlsafe_b64encode(struct.pack(">BQQBQB", 3, 1, 0, 0, 0, 0)).decode(),
        base64.urlsafe_b64encode(struct.pack(">BQQBQB", 2, 1, 0, 0, 0, 4)).decode(),
        base64.urlsafe_b64encode(struct.pack(">BQQBQB", 2, 1, 0, BUCKETS, 0, 0)).decode(),
        # A mask cut short; a snapshot whose node count is more than it holds.
        base64.urlsafe_b64encode(struct.pack(">BQQBQB", 2, 1, 0, 0, 0, 1) + b"\0" * 3).decode(),
        base64.urlsafe_b64encode(
            struct.pack(">BQQBQB", 2, 1, 0, 0, 0, 2) + b"\2" + b"a" * 20
        ).decode(),
    ],
)
def test_a_feed_cursor_not_handed_out_is_refused(text: str) -> None:
    with pytest.raises(InvalidFeedCursor):
        FeedCursor.decode(text)


@pytest.mark.parametrize("after", ["", "alice", "a\u0000b", "é{}:/%"])
def test_cursors_round_trip(after: str) -> None:
    cursor = ListingCursor(17, 63, after, FEED)
    assert ListingCursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "bnVsbA",
        ListingCursor(BUCKETS, 0, "a", FEED).encode(),
        ListingCursor(0, PAGES, "a", FEED).encode(),
        ListingCursor(0, -1, "a", FEED).encode(),
        "WzEsMl0",
        "WyIxIiwiYSJd",
        ListingCursor(1, 2, "a", FEED).encode()[:-3],
    ],
)
def test_a_cursor_not_handed_out_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidListingCursor):
        ListingCursor.decode(cursor)


async def test_lua_writes_times_as_python_does(backend: Redis) -> None:
    script = backend.register_script(source("clock") + "\nreturn iso(tonumber(ARGV[1]))")
    rng = random.Random(7)
    samples = [0, 999, 951_782_400_000, 4_107_542_399_999, 1_795_000_000_123]
    samples += [rng.randrange(0, 4_102_444_800_000) for _ in range(200)]

    for ms in samples:
        assert await script(args=[ms]) == iso_from_ms(ms)
