"""Hostile input against the real HTTP server and the real Redis: Hypothesis fuzzes
``POST /webhooks/sync`` with generated form and JSON bodies, header tricks and unusual
identities. Without a valid signature, the Redis database must stay byte for byte the same
(``DUMP`` of every key) and nothing may be published; with one, the reply is a 200 or a 400
naming its fields, and an event about identity X writes only X's own keys (and X's members
of its bucket's shared indexes) and publishes only about X. And any state the rules can
make comes back whole from codec.lua, in the layout written now and in the one before.

Hypothesis runs in a worker thread and drives the service on the test's event loop through
``run_coroutine_threadsafe``, so every example talks to the same live server.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis

from harness.processes import RedisServer
from presence.events import (
    EVENT_TYPES,
    MAX_SAFE_INTEGER,
    InvalidPayload,
    ReachabilityEvent,
    parse_event,
)
from presence.twilio.samples import SERVICE_SID, collection_event, reachability
from tests import codec
from tests.codec import State
from tests.hostile import (
    FORM,
    JSON,
    REACHABILITY,
    SECOND_TOKEN,
    WRONG_TOKEN,
    World,
    check_reply,
    event_params,
    form_pairs,
    json_request,
    other_url,
    typed,
)
from tests.hostile import world as world  # the alias keeps this fixture where pytest finds it
from tests.support import AUTH_TOKEN, sign

BUCKETS = 128
PAGES = 64
"""Part of the documented key layout (docs/redis.md, "Redis keys"); recomputed here on purpose."""

CI = bool(os.environ.get("CI"))
FUZZ = settings(deadline=None, derandomize=CI, suppress_health_check=list(HealthCheck))
if CI:
    FUZZ = settings(FUZZ, database=None)
EXAMPLES_RUN: dict[str, int] = {}
"""Examples each property actually ran (printed with ``pytest -s``; checked at the end)."""

# --- generated input ---------------------------------------------------------------------

TEXT = st.characters(codec="utf-8", exclude_categories=["Cs"])
"""Any Unicode scalar value: controls, NUL, combining marks, emoji, private use."""

TRICKY_NAMES = [
    "a",
    "a:b",
    "a:",
    ":a",
    "a}{b",
    "{x}",
    "{",
    "}",
    "{}",
    "x:changes",
    "changes",
    "presence:changes",
    "%2F",
    "%",
    "%25",
    "%00",
    "/",
    "a/b",
    "\\",
    "a\\b",
    ".",
    "..",
    "*",
    "?",
    "[ab]",
    " ",
    "\t",
    "a\x00b",
    "\x7f",
    "\r\n",
    "\u200b",
    "e\u0301",
    "é",
    "🙂",
    "\ufeff",
    "\U0010ffff",
    "System",
    SERVICE_SID,
    "i:" + SERVICE_SID + ":a",
]
long_names = st.builds(
    lambda char, length: char * length,
    st.sampled_from(["x", "é", "🙂", "{", ":", "%", "\\"]),
    st.sampled_from([1023, 1024, 1025, 2048]),
)
names = st.one_of(st.sampled_from(TRICKY_NAMES), st.text(TEXT, min_size=1, max_size=16), long_names)
"""Identities: valid ones of every shape, and some too long."""

PARAMETERS = sorted(
    {
        "AccountSid",
        "ServiceSid",
        "EventType",
        "Identity",
        "EndpointId",
        "EventId",
        "IsIdentityOnline",
        "DocumentSid",
        "DocumentRevision",
        "DocumentUniqueName",
        "DocumentData",
        "ListSid",
        "ListRevision",
        "ListUniqueName",
        "MapSid",
        "MapRevision",
        "MapUniqueName",
        "ItemIndex",
        "ItemKey",
        "ItemRevision",
        "ItemData",
    }
)
ODD_VALUES = [
    "",
    " ",
    "0",
    "-1",
    "+1",
    "1.0",
    "1e3",
    "0x1f",
    "٣",
    "¹",
    " 7",
    str(2**53 - 1),
    str(2**53),
    "9" * 5000,
    "true",
    "False",
    "TRUE",
    "yes",
    "null",
    "{}",
    "[]",
    "[",
    '{"a":1',
    "NaN",
    "-Infinity",
    '"\\ud800"',
    "[" * 300 + "]" * 300,
    "\x00",
    "AC" + "0" * 32,
    "IS" + "F" * 32,
    "is" + "f" * 32,
    "IS" + "f" * 31,
    "IS" + "f" * 33,
    "ET" + "1" * 32,
    "ES" + "2" * 32,
    "MP" + "3" * 32,
    "system",
    "endpoint_connected",
    "map_item_added",
]
huge_values = st.builds(
    lambda char, length: char * length,
    st.sampled_from(["x", "é", "[", "\x00", "%"]),
    st.sampled_from([5_000, 100_000, 400_000]),
)
values = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.text(TEXT, max_size=24),
    st.integers(-(2**70), 2**70).map(str),
    names,
    huge_values,
)
parameter_names = st.one_of(
    st.sampled_from(PARAMETERS),
    st.sampled_from(["identity", "IDENTITY", "Identity ", "Identity[]", "", "bodySHA256"]),
    st.text(TEXT, max_size=10),
)
Op = tuple[str, str, str]
operations: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("set"), parameter_names, values),
    st.tuples(st.just("delete"), st.sampled_from(PARAMETERS), st.just("")),
    st.tuples(st.just("repeat"), st.sampled_from(PARAMETERS), values),
    st.tuples(st.just("many"), st.sampled_from(["150", "199", "200", "201", "400"]), st.just("")),
)
RAW_SUFFIXES = [
    b"&%FF=1",
    b"&Identity=%C3",
    b"&x=%ED%A0%80",
    b"&x=%F4%90%80%80",
    b"&x=%C0%AF",
    b"&x=%EF%BF%BE",
    b"&=",
    b"&&",
    b"&novalue",
    b"&a=b=c",
    b";x=1",
    b"&%=1",
    b"&%zz=1",
    b"&\xff=1",
    b"&+=+",
    b"&Identity",
    b"&x=%00",
    b"\r\n",
]
EVENT_TYPE_CHOICES = st.one_of(
    st.sampled_from(sorted(EVENT_TYPES)),
    st.sampled_from(REACHABILITY),
    st.sampled_from(["stream_message_published", "", "ENDPOINT_CONNECTED", "endpoint_connected "]),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=4), inner),
    max_leaves=8,
)


def mutated(pairs: list[tuple[str, str]], ops: Iterable[Op]) -> list[tuple[str, str]]:
    pairs = list(pairs)
    for kind, name, value in ops:
        if kind == "set":
            pairs = [(n, value if n == name else v) for n, v in pairs]
            if all(n != name for n, _ in pairs):
                pairs.append((name, value))
        elif kind == "delete":
            pairs = [(n, v) for n, v in pairs if n != name]
        elif kind == "repeat":
            pairs.append((name, value))
        else:
            pairs += [(f"P{n}", "v") for n in range(int(name))]
    return pairs


@st.composite
def events(draw: st.DrawFn) -> dict[str, str]:
    return event_params(
        draw(EVENT_TYPE_CHOICES),
        draw(names),
        draw(st.one_of(st.sampled_from(["E1", "E2"]), names)),
        draw(st.one_of(st.integers(0, 50), st.just(2**53 - 1))),
        draw(st.booleans()),
    )


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """A form webhook of any type, its parameters mutated, its encoding sometimes broken."""
    pairs = mutated(list(draw(events()).items()), draw(st.lists(operations, max_size=3)))
    body = urlencode(pairs).encode()
    suffix = draw(st.one_of(st.just(b""), st.sampled_from(RAW_SUFFIXES)))
    return body + suffix


RAW_JSON = [
    b"",
    b"\xef\xbb\xbf{}",
    b"{" * 5000,
    b"[" * 100_000,
    b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}",
    '{"a": 1}'.encode("utf-16"),
    b"nul\x00",
    b'{"EventType": "endpoint_connected",}',
    b"1e999999",
    b'{"a": ' + b"1" * 5000 + b"}",
    b'"\\ud800"',
    b"[]",
    b"null",
    b'{"EventType": null}',
    b'{"EventType": ["endpoint_connected"]}',
    b'{"EventType": {"a": 1}}',
    b'{"\\ud800": 1, "EventType": "document_created"}',
]


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """Typed, mistyped, duplicated, non-object, surrogate-laden and broken JSON webhooks."""
    shape = draw(st.sampled_from(["object", "object", "duplicate", "surrogate", "other", "raw"]))
    if shape == "raw":
        return draw(st.one_of(st.sampled_from(RAW_JSON), st.binary(max_size=64)))
    if shape == "other":
        return json.dumps(draw(json_values)).encode()
    params = draw(events())
    document = typed(params) if draw(st.booleans()) else dict(params)
    for name, value in draw(st.lists(st.tuples(parameter_names, json_values), max_size=3)):
        document[name] = value
    for name in draw(st.lists(st.sampled_from(PARAMETERS), max_size=2)):
        document.pop(name, None)
    if shape == "surrogate":
        name = draw(st.one_of(st.sampled_from(PARAMETERS), st.just("\udc80")))
        document[name] = draw(st.sampled_from(["\ud800", "a\udfffb", "\udbff\udbff"]))
    members = list(document.items())
    if shape == "duplicate":
        members.append((draw(st.sampled_from(PARAMETERS)), draw(json_values)))
    ascii_only = draw(st.booleans())
    text = ", ".join(
        f"{json.dumps(k, ensure_ascii=ascii_only)}: {json.dumps(v, ensure_ascii=ascii_only)}"
        for k, v in members
    )
    return ("{" + text + "}").encode("utf-8", "surrogatepass")


CONTENT_TYPES: list[str | tuple[str, ...] | None] = [
    FORM,
    JSON,
    "Application/X-WWW-Form-URLEncoded",
    "APPLICATION/JSON",
    FORM + "; charset=latin-1",
    FORM + ";charset=UTF-8",
    JSON + "; charset=utf-16",
    "text/plain",
    "",
    None,
    "multipart/form-data; boundary=x",
    f"{FORM}, {JSON}",
    "application/x-www-form-urlencoded-x",
    (FORM, JSON),
    (JSON, FORM),
]
SIGNATURE_ATTACKS = [
    "none",
    "empty",
    "garbage",
    "huge",
    "wrong_token",
    "other_path",
    "other_host",
    "https",
    "other_query",
    "sha256_unannounced",
    "truncated",
    "invalid_then_valid",
    "other_body",
]


@dataclass(frozen=True)
class Hostile:
    """One unsigned (or wrongly signed) webhook."""

    body: bytes
    content_type: str | tuple[str, ...] | None
    signature: str
    padding: bool = False
    query: str = ""


unsigned_webhooks = st.builds(
    Hostile,
    body=st.one_of(
        form_bodies(),
        json_bodies(),
        st.binary(max_size=200),
        st.sampled_from([b"x" * (2**20), b"x" * (2**20 + 1), b"=" * (3 * 2**20)]),
    ),
    content_type=st.sampled_from(CONTENT_TYPES),
    signature=st.sampled_from(SIGNATURE_ATTACKS),
    padding=st.booleans(),
    query=st.sampled_from(["", "?x=1", "?bodySHA256=00"]),
)


@dataclass(frozen=True)
class Signed:
    """One webhook with a valid signature."""

    body: bytes
    content_type: str
    query: str = ""
    token: str | None = None
    signer: str = AUTH_TOKEN


signed_forms = st.builds(
    Signed,
    body=form_bodies(),
    content_type=st.sampled_from(
        [FORM, FORM, "Application/X-WWW-Form-URLEncoded", FORM + "; charset=utf-8"]
    ),
    query=st.sampled_from(["", "", "?x=1", "?bodySHA256=00"]),
    token=st.one_of(st.none(), st.text(string.ascii_letters + "-:{}%", min_size=1, max_size=20)),
    signer=st.sampled_from([AUTH_TOKEN, SECOND_TOKEN]),
)
signed_jsons = st.builds(
    Signed,
    body=json_bodies(),
    content_type=st.sampled_from([JSON, JSON, "Application/JSON", JSON + "; charset=utf-8"]),
    token=st.one_of(st.none(), st.sampled_from(["t-1", "t-2", "x" * 300])),
    signer=st.sampled_from([AUTH_TOKEN, SECOND_TOKEN]),
)

# --- the keys and channels that belong to an identity ------------------------------------


def bucket(name: str) -> int:
    return zlib.crc32(name.encode()) % BUCKETS


def place(service_sid: str, identity: str) -> tuple[int, int]:
    """An identity's bucket and page, as keys.py documents them (computed here again, so
    that a change of layout shows up)."""
    h = zlib.crc32((service_sid + identity).encode())
    return h % BUCKETS, h // BUCKETS % PAGES


def identity_keys(service_sid: str, identity: str) -> dict[str, bytes]:
    b, g = place(service_sid, identity)
    tag = f"presence:{{{b}}}"
    return {
        "page": f"{tag}:h:{service_sid}:{g}".encode(),
        "graveyard": f"{tag}:g:{service_sid}:{g}".encode(),
        "counters": f"{tag}:n:{service_sid}".encode(),
        "due": f"{tag}:dq".encode(),
        "feed": f"{tag}:f:{service_sid}".encode(),
    }


def graveyard_records(blob: bytes | None) -> set[bytes]:
    """The 23-byte records of a graveyard (codec.lua), each led by its 6-byte key."""
    blob = blob or b""
    assert len(blob) % 23 == 0
    return {blob[at : at + 23] for at in range(0, len(blob), 23)}


def collection_keys(subject_sid: str, token: str | None) -> set[bytes]:
    tag = f"presence:{{{bucket(subject_sid)}}}"
    keys = {f"{tag}:seen:{subject_sid}".encode()}
    if token:
        keys.add(f"{tag}:tok:{token}".encode())
    return keys


_same_page: dict[tuple[int, int], str] = {}


def same_page_name(identity: str) -> str:
    """Another identity kept in the page (so the bucket and hash slot) of ``identity``."""
    wanted = place(SERVICE_SID, identity)
    if wanted not in _same_page:
        n = 0
        while place(SERVICE_SID, f"nb{n}") != wanted or f"nb{n}" == identity:
            n += 1
        _same_page[wanted] = f"nb{n}"
    return _same_page[wanted]


def neighbours(identity: str) -> list[str]:
    """Identities that a sloppy key or channel layout would confuse with ``identity``."""
    candidates = [
        same_page_name(identity),
        identity[:-1],
        identity + "x",
        identity + ":changes",
        "{" + identity + "}",
        identity + "}{",
    ]
    return [
        name
        for name in dict.fromkeys(candidates)
        if name and name != identity and name != "system" and len(name) <= 1024
    ]


def json_pairs(body: bytes) -> list[tuple[str, Any]] | None:
    """The members of a JSON object body, repeats included, or None for any other body."""
    found: list[list[tuple[str, Any]]] = []

    def remember(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found.append(pairs)
        return dict(pairs)

    try:
        document = json.loads(body, object_pairs_hook=remember)
    except (ValueError, RecursionError):
        return None
    return found[-1] if isinstance(document, dict) else None


def attack_headers(world: World, hostile: Hostile) -> list[tuple[str, str]]:
    """Headers whose signature is wrong for this request in the way ``hostile`` says."""
    url = world.url(hostile.query)
    pairs = form_pairs(hostile.body) or []
    if hostile.query.startswith("?bodySHA256="):
        pairs = []
    valid = sign(url, pairs)
    signature = {
        "none": None,
        "empty": "",
        "garbage": "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA==",
        "huge": "A" * 8000,
        "wrong_token": sign(url, pairs, WRONG_TOKEN),
        "other_body": sign(url, [*pairs, ("Extra", "1")]),
        "sha256_unannounced": sign(url, pairs, algorithm="HMAC_SHA256"),
        "truncated": valid[:-2],
        "invalid_then_valid": "invalid",
    }.get(hostile.signature, "")
    if hostile.signature in ("other_path", "other_host", "https", "other_query"):
        signature = sign(other_url(url, hostile.signature), pairs)
    headers: list[tuple[str, str]] = []
    if isinstance(hostile.content_type, tuple):
        headers += [("Content-Type", value) for value in hostile.content_type]
    elif hostile.content_type is not None:
        headers.append(("Content-Type", hostile.content_type))
    if signature is not None:
        headers.append(("X-Twilio-Signature", signature))
    if hostile.signature == "invalid_then_valid":
        headers.append(("X-Twilio-Signature", valid))
    if hostile.padding:
        headers += [("X-Padding", "p" * 8000), ("I-Twilio-Idempotency-Token", "t" * 8000)]
    return headers


async def refused_without_a_trace(world: World, hostile: Hostile) -> None:
    before = await world.observer.snapshot()
    status, reply = await world.post(hostile.query, hostile.body, attack_headers(world, hostile))
    if reply is not None:
        check_reply(status, reply)
    assert status in (400, 403, 413, 415), (status, reply)
    if status == 400 and reply is not None:
        # The only refusal that may come before the signature check: a form that cannot be
        # decoded, so cannot be checked.
        assert reply["detail"] == [{"field": "body", "message": "is not valid UTF-8"}], reply
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


async def only_its_own(world: World, signed: Signed) -> tuple[int, Any]:
    """Sends a validly signed webhook; checks it touched nothing but its own identity's."""
    is_json = signed.content_type.lower().startswith(JSON)
    pairs: list[tuple[str, Any]] | None
    if is_json:
        query, signature = json_request(world.url(), signed.body, signed.signer)
        pairs = json_pairs(signed.body)
    else:
        query = signed.query
        pairs = form_pairs(signed.body)
        signature = sign(world.url(query), pairs or [], signed.signer)
    event: Any = None
    if pairs is not None:
        try:
            event = parse_event(pairs)
        except (InvalidPayload, ValueError, TypeError):
            event = None
    if event is not None:
        await world.seed([event.identity, *neighbours(event.identity)])
        await world.observer.published()
    headers = [("Content-Type", signed.content_type), ("X-Twilio-Signature", signature)]
    if signed.token is not None:
        headers.append(("I-Twilio-Idempotency-Token", signed.token))

    before = await world.observer.snapshot()
    status, reply = await world.post(query, signed.body, headers)
    after = await world.observer.snapshot()
    published = await world.observer.published()

    check_reply(status, reply)
    assert status in (200, 400, 413), (status, reply)
    if status == 400 and pairs is None:
        assert reply["detail"][0]["field"] == "body", reply
    outcome = reply.get("status")
    if outcome != "applied":
        assert after == before, (status, reply)
        assert published == []
        return status, reply
    assert event is not None, "an event was applied that its parameters do not describe"
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    identity = event.identity
    if isinstance(event, ReachabilityEvent):
        own = identity_keys(event.service_sid, identity)
        assert changed <= set(own.values()), (identity, changed)
        # The page and the bucket's due pages may change, but only in this identity's field
        # and its page's member; the graveyard only in one record (of one key); the feed
        # only by changes of this identity.
        page = place(event.service_sid, identity)[1]
        for name, member in (("page", identity), ("due", f"{event.service_sid}:{page}")):
            old = dict(before.get(own[name], (b"", {}))[1])
            new = dict(after.get(own[name], (b"", {}))[1])
            old.pop(member.encode(), None)
            new.pop(member.encode(), None)
            assert old == new, (identity, name)
        old_records = graveyard_records(before.get(own["graveyard"], (b"", b""))[1])
        new_records = graveyard_records(after.get(own["graveyard"], (b"", b""))[1])
        gone, came = old_records - new_records, new_records - old_records
        assert len(gone) <= 1, identity
        assert len(came) <= 1, identity
        assert len({record[:6] for record in gone | came}) <= 1, identity
        old_feed = set(before.get(own["feed"], (b"", []))[1])
        added = [entry for entry in after.get(own["feed"], (b"", []))[1] if entry not in old_feed]
        fed = [dict(fields)[b"c"] for _, fields in added]
        channels = {"presence:changes", f"presence:changes:{event.service_sid}:{identity}"}
        assert {channel for channel, _ in published} <= channels, (identity, published)
        everywhere = [m for c, m in published if c == "presence:changes"]
        assert everywhere == [m for c, m in published if c != "presence:changes"]
        assert fed == everywhere, identity
        versions = []
        for message in everywhere:
            change = json.loads(message, parse_constant=_no_constants)
            assert change["identity"] == identity
            assert change["service_sid"] == event.service_sid
            versions.append(change["version"])
        found = await world.service.client.post(
            f"/v1/services/{event.service_sid}/lookup", json={"identities": [identity]}
        )
        assert found.status == 200
        [presence] = (await found.json())["identities"]
        assert presence["identity"] == identity
        if versions:
            assert presence["version"] == versions[-1]
    else:
        token = service_token(signed.token)
        assert changed <= collection_keys(event.subject_sid, token), (identity, changed)
        assert [channel for channel, _ in published] == ["presence:sync-events"], published
        message = json.loads(published[0][1], parse_constant=_no_constants)
        assert message["identity"] == identity
        assert message["event_type"] == event.event_type
    return status, reply


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} published: not JSON")


def service_token(token: str | None) -> str | None:
    """The idempotency token the service uses (it ignores long or non-ASCII ones)."""
    if not token or len(token) > 256 or not token.isascii():
        return None
    return token


# --- the fuzz properties ------------------------------------------------------------------


def count(name: str) -> None:
    EXAMPLES_RUN[name] = EXAMPLES_RUN.get(name, 0) + 1


@settings(FUZZ, max_examples=130)
@given(hostile=unsigned_webhooks)
@example(hostile=Hostile(b"EventType=endpoint_connected", (FORM, JSON), "invalid_then_valid"))
@example(hostile=Hostile(b"x" * (2**20 + 1), FORM, "none"))
@example(hostile=Hostile(b"Identity=%FF", FORM + "; charset=latin-1", "garbage"))
@example(hostile=Hostile(b'{"Identity": "\\ud800"}', JSON, "other_body", query="?x=1"))
def check_unsigned(world: World, hostile: Hostile) -> None:
    count("unsigned")
    world.run(refused_without_a_trace(world, hostile))


@settings(FUZZ, max_examples=130)
@given(signed=signed_forms)
@example(signed=Signed(urlencode(collection_event("list_item_added")).encode(), FORM, token="t"))
@example(
    signed=Signed(
        urlencode(
            collection_event("document_updated", DocumentData="[" * 300 + "]" * 300)
        ).encode(),
        FORM,
    )
)
@example(
    signed=Signed(
        urlencode(reachability("a", "E1", 1, True, connected=True)).encode() + b"&Identity=b",
        FORM,
    )
)
def check_signed_form(world: World, signed: Signed) -> None:
    count("signed form")
    world.run(only_its_own(world, signed))


@settings(FUZZ, max_examples=60)
@given(signed=signed_jsons)
@example(
    signed=Signed(
        json.dumps(
            typed(collection_event("document_created"))
            | {"DocumentData": json.loads("[" * 300 + "]" * 300)}
        ).encode(),
        JSON,
    )
)
@example(
    signed=Signed(
        json.dumps(
            typed(collection_event("map_item_updated")) | {"ItemData": float("nan")}
        ).encode(),
        JSON,
    )
)
def check_signed_json(world: World, signed: Signed) -> None:
    count("signed json")
    world.run(only_its_own(world, signed))


@dataclass(frozen=True)
class Sequence_:
    """Several valid reachability events about one unusual identity."""

    identity: str
    steps: tuple[tuple[bool, bool, str], ...]
    """(connected, IsIdentityOnline, EndpointId) per event, EventIds increasing."""
    as_json: bool = False


sequences = st.builds(
    Sequence_,
    identity=names.filter(lambda name: len(name) <= 1024 and name != "system"),
    steps=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.sampled_from(["E1", "E2", "{E}:1"])),
        min_size=1,
        max_size=3,
    ).map(tuple),
    as_json=st.booleans(),
)


async def replay(world: World, sequence: Sequence_, first_id: int) -> None:
    for offset, (connected, online, endpoint) in enumerate(sequence.steps):
        params = reachability(
            sequence.identity, endpoint, first_id + offset, online, connected=connected
        )
        if sequence.as_json:
            signed = Signed(json.dumps(typed(params)).encode(), JSON)
        else:
            signed = Signed(urlencode(params).encode(), FORM)
        status, reply = await only_its_own(world, signed)
        assert status == 200, reply


@settings(FUZZ, max_examples=70)
@given(sequence=sequences)
@example(sequence=Sequence_("a:b", ((True, True, "E1"), (False, False, "E1"))))
@example(sequence=Sequence_("a}{b", ((True, True, "E1"),)))
@example(sequence=Sequence_("{x}", ((True, True, "E1"),), as_json=True))
@example(sequence=Sequence_("x:changes", ((True, True, "E1"), (False, True, "E1"))))
@example(sequence=Sequence_("%2F", ((True, True, "E1"),)))
@example(sequence=Sequence_("é" * 1024, ((True, True, "E1"),)))
def check_identity_isolation(world: World, sequence: Sequence_) -> None:
    count("identity isolation")
    world.next_event_id += 10
    world.run(replay(world, sequence, world.next_event_id))


async def in_worker(check: Callable[[World], None], world: World, name: str, least: int) -> None:
    await asyncio.to_thread(check, world)
    print(f"{name}: {EXAMPLES_RUN.get(name, 0)} examples")
    assert EXAMPLES_RUN.get(name, 0) >= least


async def test_unsigned_webhooks_change_nothing(world: World) -> None:
    await in_worker(check_unsigned, world, "unsigned", 100)


async def test_signed_forms_touch_only_their_identity(world: World) -> None:
    await in_worker(check_signed_form, world, "signed form", 100)


async def test_signed_json_touches_only_its_identity(world: World) -> None:
    await in_worker(check_signed_json, world, "signed json", 50)


async def test_unusual_identities_touch_only_their_own_keys(world: World) -> None:
    await in_worker(check_identity_isolation, world, "identity isolation", 50)


# --- codec.lua: any state the rules can make round-trips, in either layout -----------------

TIMES = st.integers(0, 2**47)
"""Milliseconds: the rules' times are the server's clock, about 2^41 now."""
ENDPOINT_NAMES = st.one_of(
    st.uuids().map(str),
    st.text(TEXT, min_size=1, max_size=40),
    st.text(TEXT, min_size=250, max_size=300),
)


@st.composite
def codec_states(draw: st.DrawFn) -> State:
    """A stored state as the rules keep it: every EventId at or below top (none without a
    top), marks of distinct endpoints, an endpoint connected or a tombstone, not both."""
    top = draw(st.one_of(st.none(), st.integers(0, MAX_SAFE_INTEGER)))
    below = st.integers(0, top or 0)
    names = draw(st.lists(ENDPOINT_NAMES, unique=True, max_size=0 if top is None else 10))
    split = draw(st.integers(0, len(names)))
    marks = [(name, draw(below), draw(TIMES)) for name in names]
    off = top is not None and draw(st.booleans())
    deadline = top is not None and draw(st.booleans())
    forgotten = top is not None and draw(st.booleans())
    off_endpoint = None
    if off:
        # The flap's: one of its marks' endpoint; else one forgotten.
        flap = bool(names) and draw(st.booleans())
        off_endpoint = draw(st.sampled_from(names)) if flap else draw(ENDPOINT_NAMES)
    return State(
        version=draw(st.integers(0, 2**32 - 1)),
        published_online=draw(st.booleans()),
        top_online=draw(st.booleans()),
        top=top,
        top_at=draw(TIMES),
        changed_at=draw(st.one_of(st.none(), st.integers(1, 2**47))),
        deadline=draw(TIMES) if deadline else None,
        deadline_event=draw(below) if deadline else None,
        off_floor=draw(below) if off else None,
        off_endpoint=off_endpoint,
        forgotten_floor=draw(below) if forgotten else None,
        connected=marks[:split],
        tombstones=marks[split:],
    )


@pytest.fixture(scope="module")
def lua_client(redis_server: RedisServer) -> Iterator[SyncRedis]:
    client = SyncRedis.from_url(redis_server.url)
    yield client
    client.close()


@FUZZ
@given(state=codec_states(), due=st.one_of(st.just(0), TIMES))
@example(state=State(top=MAX_SAFE_INTEGER, top_at=2**47, off_floor=0, off_endpoint="x"), due=1)
def test_any_state_comes_back_from_either_layout(
    lua_client: SyncRedis, state: State, due: int
) -> None:
    EXAMPLES_RUN["codec"] = EXAMPLES_RUN.get("codec", 0) + 1
    for before in (False, True):
        value = codec.write(lua_client, state, due, before=before)
        found = codec.read(lua_client, value)
        assert (found.state, found.due, found.version) == (state.canonical(), due, state.version)
        assert found.answer == codec.expected_answer(state)
