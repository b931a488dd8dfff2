"""Hostile input against the real HTTP server and the real Redis.

Three layers:

1. Hypothesis fuzzes ``POST /webhooks/sync`` with generated form and JSON bodies, header
   tricks and unusual identities. Without a valid signature, the Redis database must stay
   byte for byte the same (``DUMP`` of every key) and nothing may be published; with one, the
   reply is a 200 or a 400 naming its fields, and an event about identity X writes only X's
   own keys (and X's members of its bucket's shared indexes) and publishes only about X.
2. Signature attacks, one by one: each is a 403 and changes nothing.
3. Limits, at their boundaries, with errors that name the limit.

Hypothesis runs in a worker thread and drives the service on the test's event loop through
``run_coroutine_threadsafe``, so every example talks to the same live server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import string
import zlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from presence.events import EVENT_TYPES, InvalidPayload, ReachabilityEvent, parse_event
from tests.support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    SERVICE_SID,
    RedisServer,
    RunningApp,
    collection_event,
    reachability,
)

T = TypeVar("T")
Start = Callable[..., Any]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PATH = "/webhooks/sync"
SECOND_TOKEN = "abcdefabcdefabcdefabcdefabcdefab"
WRONG_TOKEN = "f" * 32
BUCKETS = 128
"""Part of the documented key layout (README, "Redis keys"); recomputed here on purpose."""
MARKER_CHANNEL = "presence:~hostile-marker"
OUTCOMES = {"applied", "duplicate", "stale", "ignored"}
REACHABILITY = ("endpoint_connected", "endpoint_disconnected")

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


def event_params(
    event_type: str, identity: str, endpoint: str, event_id: int, online: bool
) -> dict[str, str]:
    """A valid webhook of that type (any listed or unlisted type) about ``identity``."""
    if event_type in REACHABILITY:
        connected = event_type == "endpoint_connected"
        return reachability(identity, endpoint, event_id, online, connected=connected)
    if event_type in EVENT_TYPES:
        params = collection_event(event_type, Identity=identity, EndpointId=endpoint)
        if "EventId" in params:
            params["EventId"] = str(event_id)
        return params
    return {
        "EventType": event_type,
        "AccountSid": ACCOUNT_SID,
        "ServiceSid": SERVICE_SID,
        "Identity": identity,
    }


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


def _typed(params: dict[str, str]) -> dict[str, Any]:
    """The parameters as a JSON webhook would carry them: numbers, booleans, JSON data."""
    document: dict[str, Any] = {}
    for name, value in params.items():
        if name.endswith(("Id", "Revision", "Index")) and name != "EndpointId":
            document[name] = int(value)
        elif name == "IsIdentityOnline":
            document[name] = value == "true"
        elif name.endswith("Data"):
            document[name] = json.loads(value)
        else:
            document[name] = value
    return document


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
    document = _typed(params) if draw(st.booleans()) else dict(params)
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


def identity_keys(service_sid: str, identity: str) -> dict[str, bytes]:
    tag = f"presence:{{{bucket(service_sid + identity)}}}"
    return {
        "state": f"{tag}:i:{service_sid}:{identity}".encode(),
        "online": f"{tag}:on:{service_sid}".encode(),
        "counters": f"{tag}:n:{service_sid}".encode(),
        "due": f"{tag}:due".encode(),
    }


def collection_keys(subject_sid: str, token: str | None) -> set[bytes]:
    tag = f"presence:{{{bucket(subject_sid)}}}"
    keys = {f"{tag}:seen:{subject_sid}".encode()}
    if token:
        keys.add(f"{tag}:tok:{token}".encode())
    return keys


_same_bucket: dict[int, str] = {}


def same_bucket_name(identity: str) -> str:
    """Another identity whose keys share the bucket (hash slot) of ``identity``'s."""
    wanted = bucket(SERVICE_SID + identity)
    if wanted not in _same_bucket:
        n = 0
        while bucket(f"{SERVICE_SID}nb{n}") != wanted or f"nb{n}" == identity:
            n += 1
        _same_bucket[wanted] = f"nb{n}"
    return _same_bucket[wanted]


def neighbours(identity: str) -> list[str]:
    """Identities that a sloppy key or channel layout would confuse with ``identity``."""
    candidates = [
        same_bucket_name(identity),
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


# --- the world the examples run against ---------------------------------------------------

Snapshot = dict[bytes, tuple[bytes, Any]]
"""Every key: its DUMP (byte for byte) and its contents, read by type."""


class Observer:
    """Reads the whole database, and everything published on ``presence:*``."""

    def __init__(self, url: str) -> None:
        self.redis: Redis = Redis.from_url(url)
        self.pubsub: Any = self.redis.pubsub()
        self.markers = 0

    async def __aenter__(self) -> Observer:
        await self.pubsub.psubscribe("presence:*")
        while (await self.pubsub.get_message(timeout=1.0)) is None:
            pass
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()
        await self.redis.aclose()

    async def snapshot(self) -> Snapshot:
        keys = sorted([key async for key in self.redis.scan_iter(count=1000)])
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.dump(key)
                pipe.type(key)
            replies = await pipe.execute()
        dumps, types = replies[0::2], replies[1::2]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, kind in zip(keys, types, strict=True):
                read = {
                    b"hash": pipe.hgetall,
                    b"zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
                    b"string": pipe.get,
                    b"set": pipe.smembers,
                }.get(kind, pipe.type)
                read(key)
            contents = await pipe.execute()
        return {
            key: (dump, _contents(kind, content))
            for key, dump, kind, content in zip(keys, dumps, types, contents, strict=True)
        }

    async def published(self) -> list[tuple[str, bytes]]:
        """Every message published since the last call (a marker of our own ends the wait)."""
        self.markers += 1
        marker = f"marker-{self.markers}".encode()
        await self.redis.publish(MARKER_CHANNEL, marker)
        found: list[tuple[str, bytes]] = []
        for _ in range(500):
            message = await self.pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "pmessage":
                continue
            channel = message["channel"].decode("utf-8", "surrogateescape")
            if channel == MARKER_CHANNEL and message["data"] == marker:
                return found
            if channel != MARKER_CHANNEL:
                found.append((channel, message["data"]))
        raise AssertionError("our marker message never came back")


def _contents(kind: bytes, content: Any) -> Any:
    if kind == b"zset":
        return dict(content)
    return content


class World:
    """The running service, an observer of its Redis, and a bridge from Hypothesis' thread."""

    def __init__(self, service: RunningApp, observer: Observer) -> None:
        self.service = service
        self.observer = observer
        self.loop = asyncio.get_running_loop()
        self.seeded: set[str] = set()
        self.next_event_id = 1000

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def url(self, query: str = "") -> str:
        return self.service.webhook_url + query

    async def seed(self, identities: Iterable[str]) -> None:
        """Puts each identity online once (an endpoint of its own), so it has keys to guard."""
        for name in identities:
            if name in self.seeded:
                continue
            self.seeded.add(name)
            response = await self.service.post_signed(
                reachability(name, "seed", 1, True, connected=True)
            )
            assert response.status == 200, await response.text()

    async def post(
        self, query: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, Any]:
        response = await self.service.client.post(
            PATH + query,
            data=io.BytesIO(body),
            headers=CIMultiDict(headers),
            skip_auto_headers=["Content-Type"],
        )
        raw = await response.read()
        assert response.status < 500, raw[:2000]
        if [name for name, _ in headers].count("Content-Type") > 1:
            # aiohttp's HTTP parser refuses a repeated Content-Type before any handler runs.
            assert response.status == 400, raw[:2000]
            assert b"Duplicate 'Content-Type' header" in raw, raw[:2000]
            return 400, None
        assert response.content_type == JSON, (response.status, raw[:2000])
        return response.status, json.loads(raw)


def check_reply(status: int, reply: Any) -> None:
    """The reply is one of the documented JSON shapes for its status."""
    assert isinstance(reply, dict), reply
    if status == 200:
        assert set(reply) == {"status"}, reply
        assert reply["status"] in OUTCOMES, reply
        return
    codes = {
        400: {"invalid_payload"},
        403: {"invalid_signature", "account_not_allowed"},
        413: {"payload_too_large"},
        415: {"unsupported_media_type"},
    }
    assert status in codes, (status, reply)
    assert reply["error"] in codes[status], reply
    assert isinstance(reply["message"], str), reply
    assert reply["message"], reply
    if status == 400:
        assert set(reply) == {"error", "message", "detail"}, reply
        assert isinstance(reply["detail"], list), reply
        assert reply["detail"], reply
        for item in reply["detail"]:
            assert set(item) == {"field", "message"}, reply
            assert isinstance(item["field"], str), reply
            assert item["field"], reply
            assert isinstance(item["message"], str), reply
            assert item["message"], reply
    else:
        assert set(reply) == {"error", "message"}, reply


def form_pairs(body: bytes) -> list[tuple[str, str]] | None:
    """The parameters of a form body as Twilio signs them, or None if it is not UTF-8."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return None


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


def twilio_signature(url: str, pairs: list[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    signature: str = RequestValidator(token).compute_signature(url, MultiDict(pairs))
    return signature


def json_request(url: str, body: bytes, token: str = AUTH_TOKEN) -> tuple[str, str]:
    """The query and the signature Twilio sends with a JSON body (``bodySHA256``)."""
    query = "?bodySHA256=" + hashlib.sha256(body).hexdigest()
    return query, twilio_signature(url + query, [], token)


def other_url(url: str, how: str) -> str:
    parts = urlsplit(url)
    if how == "other_path":
        return urlunsplit(parts._replace(path=parts.path + "/"))
    if how == "other_host":
        return urlunsplit(parts._replace(netloc="evil.example:" + str(parts.port)))
    if how == "https":
        return urlunsplit(parts._replace(scheme="https"))
    return urlunsplit(parts._replace(query=(parts.query + "&" if parts.query else "") + "y=2"))


def attack_headers(world: World, hostile: Hostile) -> list[tuple[str, str]]:
    """Headers whose signature is wrong for this request in the way ``hostile`` says."""
    url = world.url(hostile.query)
    pairs = form_pairs(hostile.body) or []
    if hostile.query.startswith("?bodySHA256="):
        pairs = []
    valid = twilio_signature(url, pairs)
    signature = {
        "none": None,
        "empty": "",
        "garbage": "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA==",
        "huge": "A" * 8000,
        "wrong_token": twilio_signature(url, pairs, WRONG_TOKEN),
        "other_body": twilio_signature(url, [*pairs, ("Extra", "1")]),
        "sha256_unannounced": RequestValidator(AUTH_TOKEN).compute_signature(
            url, MultiDict(pairs), "HMAC_SHA256"
        ),
        "truncated": valid[:-2],
        "invalid_then_valid": "invalid",
    }.get(hostile.signature, "")
    if hostile.signature in ("other_path", "other_host", "https", "other_query"):
        signature = twilio_signature(other_url(url, hostile.signature), pairs)
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
        signature = twilio_signature(world.url(query), pairs or [], signed.signer)
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
        # The bucket's shared indexes may change, but only in this identity's members.
        for name, member in (("online", identity), ("due", event.service_sid + identity)):
            old = dict(before.get(own[name], (b"", {}))[1])
            new = dict(after.get(own[name], (b"", {}))[1])
            old.pop(member.encode(), None)
            new.pop(member.encode(), None)
            assert old == new, (identity, name)
        channels = {"presence:changes", f"presence:changes:{event.service_sid}:{identity}"}
        assert {channel for channel, _ in published} <= channels, (identity, published)
        everywhere = [m for c, m in published if c == "presence:changes"]
        assert everywhere == [m for c, m in published if c != "presence:changes"]
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
            _typed(collection_event("document_created"))
            | {"DocumentData": json.loads("[" * 300 + "]" * 300)}
        ).encode(),
        JSON,
    )
)
@example(
    signed=Signed(
        json.dumps(
            _typed(collection_event("map_item_updated")) | {"ItemData": float("nan")}
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
            signed = Signed(json.dumps(_typed(params)).encode(), JSON)
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


BASELINE = ["alice", "a", "b", "a:b", "x", "{x}", "x:changes", "%2F", "/", "é", "nb0"]


@pytest.fixture
async def world(start_service: Start, redis_server: RedisServer) -> Any:
    service: RunningApp = await start_service(twilio_auth_token=f"{AUTH_TOKEN},{SECOND_TOKEN}")
    async with Observer(redis_server.url) as observer:
        world = World(service, observer)
        await world.seed(BASELINE)
        # An identity that is pending offline, and a recorded collection event with a token.
        await world.service.post_signed(reachability("alice", "seed", 2, False, connected=False))
        await world.service.post_signed(
            collection_event("list_item_added"), **{"I-Twilio-Idempotency-Token": "seed"}
        )
        await observer.published()
        yield world


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


# --- signature attacks --------------------------------------------------------------------

MALLORY = reachability("mallory", "E1", 7, True, connected=True)
"""What an attacker would like applied: an identity online that is not."""


def _form(pairs: Iterable[tuple[str, str]]) -> bytes:
    return urlencode(list(pairs)).encode()


def _json(params: dict[str, str]) -> bytes:
    return json.dumps(_typed(params)).encode()


Attack = tuple[str, bytes, list[tuple[str, str]]]


def attack(name: str, url: str) -> Attack:
    """One forged request: (query, body, headers), built for the service at ``url``."""
    pairs = list(MALLORY.items())
    form = [("Content-Type", FORM)]

    def signed_by(signature: str, body: bytes = _form(pairs), query: str = "") -> Attack:
        return query, body, [*form, ("X-Twilio-Signature", signature)]

    if name == "missing signature":
        return "", _form(pairs), form
    if name == "empty signature":
        return signed_by("")
    if name == "wrong token":
        return signed_by(twilio_signature(url, pairs, WRONG_TOKEN))
    if name == "a parameter altered":
        altered = [(n, "alice" if n == "Identity" else v) for n, v in pairs]
        return signed_by(twilio_signature(url, pairs), _form(altered))
    if name == "the EventId altered":
        altered = [(n, "8" if n == "EventId" else v) for n, v in pairs]
        return signed_by(twilio_signature(url, pairs), _form(altered))
    if name == "a parameter added":
        return signed_by(twilio_signature(url, pairs), _form([*pairs, ("Extra", "1")]))
    if name == "a parameter removed":
        signed = [*pairs, ("DateCreated", "2026-11-23T10:00:00Z")]
        return signed_by(twilio_signature(url, signed), _form(pairs))
    if name in ("other_path", "other_host", "https", "other_query"):
        return signed_by(twilio_signature(other_url(url, name), pairs))
    if name == "query dropped":
        return signed_by(twilio_signature(url + "?x=1", pairs))
    if name == "query added":
        return signed_by(twilio_signature(url, pairs), query="?x=1")
    if name == "a=1&a=2 sent as a=12":
        signed = [*pairs, ("Note", "1"), ("Note", "2")]
        return signed_by(twilio_signature(url, signed), _form([*pairs, ("Note", "12")]))
    if name == "a=12 sent as a=1&a=2":
        signed = [*pairs, ("Note", "12")]
        sent = [*pairs, ("Note", "1"), ("Note", "2")]
        return signed_by(twilio_signature(url, signed), _form(sent))
    if name == "SHA-256 announced, SHA-1 sent":
        query, body, headers = signed_by(twilio_signature(url, pairs))
        return (
            query,
            body,
            [*headers, ("X-Twilio-Webhooks-Signature-Settings", "algorithm=HMAC_SHA256")],
        )
    if name == "signature in lower case":
        return signed_by(twilio_signature(url, pairs).lower())
    if name == "invalid signature, then a valid one":
        _, body, headers = signed_by("bm9wZQ==")
        return "", body, [*headers, ("X-Twilio-Signature", twilio_signature(url, pairs))]
    if name == "a valid signature, then an invalid one":
        _, body, headers = signed_by(twilio_signature(url, pairs))
        return "", body, [*headers, ("X-Twilio-Signature", "bm9wZQ==")]
    if name == "valid and invalid signatures joined":
        return signed_by(twilio_signature(url, pairs) + ", bm9wZQ==")
    if name == "form claiming a bodySHA256":
        body = _form(pairs)
        query = "?bodySHA256=" + hashlib.sha256(body).hexdigest()
        return signed_by(twilio_signature(url + query, []), body, query)
    body = _json(MALLORY)
    json_type = [("Content-Type", JSON)]
    if name == "JSON altered after signing":
        query, signature = json_request(url, body)
        return (
            query,
            body.replace(b'"EventId": 7', b'"EventId": 8'),
            [
                *json_type,
                ("X-Twilio-Signature", signature),
            ],
        )
    if name == "JSON with the bodySHA256 of another body":
        query, signature = json_request(url, _json(MALLORY | {"EventId": "1"}))
        return query, body, [*json_type, ("X-Twilio-Signature", signature)]
    if name == "JSON signed as a form":
        return "", body, [*json_type, ("X-Twilio-Signature", twilio_signature(url, pairs))]
    if name == "JSON signed by a wrong token":
        query, signature = json_request(url, body, WRONG_TOKEN)
        return query, body, [*json_type, ("X-Twilio-Signature", signature)]
    raise AssertionError(name)


ATTACKS = [
    "missing signature",
    "empty signature",
    "wrong token",
    "a parameter altered",
    "the EventId altered",
    "a parameter added",
    "a parameter removed",
    "other_path",
    "other_host",
    "https",
    "other_query",
    "query dropped",
    "query added",
    "a=1&a=2 sent as a=12",
    "a=12 sent as a=1&a=2",
    "SHA-256 announced, SHA-1 sent",
    "signature in lower case",
    "invalid signature, then a valid one",
    "a valid signature, then an invalid one",
    "valid and invalid signatures joined",
    "form claiming a bodySHA256",
    "JSON altered after signing",
    "JSON with the bodySHA256 of another body",
    "JSON signed as a form",
    "JSON signed by a wrong token",
]


async def refused_unchanged(
    world: World, query: str, body: bytes, headers: list[tuple[str, str]]
) -> None:
    before = await world.observer.snapshot()
    status, reply = await world.post(query, body, headers)
    assert (status, reply.get("error")) == (403, "invalid_signature"), reply
    check_reply(status, reply)
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


@pytest.mark.parametrize("name", ATTACKS)
async def test_a_forged_signature_is_a_403_that_changes_nothing(world: World, name: str) -> None:
    await refused_unchanged(world, *attack(name, world.url()))


async def test_a_signature_by_the_secondary_token_is_accepted(world: World) -> None:
    """The positive control of the attacks above: two tokens configured, the second signs."""
    url = world.url()
    pairs = list(MALLORY.items())
    status, reply = await world.post(
        "",
        _form(pairs),
        [
            ("Content-Type", FORM),
            ("X-Twilio-Signature", twilio_signature(url, pairs, SECOND_TOKEN)),
        ],
    )
    assert (status, reply) == (200, {"status": "applied"})
    body = _json(reachability("mallory", "E2", 8, True, connected=True))
    query, signature = json_request(url, body, SECOND_TOKEN)
    status, reply = await world.post(
        query, body, [("Content-Type", JSON), ("X-Twilio-Signature", signature)]
    )
    assert (status, reply) == (200, {"status": "applied"})
    presence = await world.service.store.identity(SERVICE_SID, "mallory")
    assert presence.online
    assert sorted(presence.endpoints) == ["E1", "E2"]


async def test_reordering_repeated_parameters_cannot_change_the_identity(world: World) -> None:
    """Twilio signs repeated values sorted, so their order is not signed: a signed body with
    two Identity values is refused whole rather than read as either one."""
    url = world.url()
    pairs = [*MALLORY.items(), ("Identity", "alice")]
    signature = twilio_signature(url, pairs)
    for sent in (pairs, pairs[::-1]):
        before = await world.observer.snapshot()
        status, reply = await world.post(
            "", _form(sent), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
        )
        assert status == 400
        assert {"field": "Identity", "message": "given more than once"} in reply["detail"]
        assert await world.observer.snapshot() == before
        assert await world.observer.published() == []


async def test_the_signature_is_exactly_as_ambiguous_as_twilios(world: World) -> None:
    """Twilio's canonical string concatenates names and values: Note=1&Note=2 and Note=1Note2
    sign the same. The service accepts exactly what Twilio's own validator accepts, no more."""
    url = world.url()
    signed = [*MALLORY.items(), ("Note", "1"), ("Note", "2")]
    signature = twilio_signature(url, signed)
    collided = [*MALLORY.items(), ("Note", "1Note2")]
    assert RequestValidator(AUTH_TOKEN).validate(url, MultiDict(collided), signature)
    status, _ = await world.post(
        "", _form(collided), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
    )
    assert status == 200
    await world.observer.published()
    for sent in ([*MALLORY.items(), ("Note", "12")], [*MALLORY.items(), ("Note", "1N")]):
        assert not RequestValidator(AUTH_TOKEN).validate(url, MultiDict(sent), signature)
        await refused_unchanged(
            world, "", _form(sent), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
        )


# --- limits -------------------------------------------------------------------------------


async def _stream(body: bytes, size: int = 1000) -> Any:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_the_body_limit_is_exact_and_named(
    start_service: Start, redis_server: RedisServer
) -> None:
    """PRESENCE_MAX_BODY_BYTES: a body of exactly the limit is read, one byte more is a 413
    whose message names the limit, with or without a Content-Length."""
    service: RunningApp = await start_service(max_body_bytes=4096)
    url = service.webhook_url
    base = urlencode(reachability("alice", "E1", 1, True, connected=True)) + "&Padding="
    at_limit = (base + "x" * (4096 - len(base))).encode()
    assert len(at_limit) == 4096
    headers = {
        "Content-Type": FORM,
        "X-Twilio-Signature": twilio_signature(url, parse_qsl(at_limit.decode())),
    }
    async with Observer(redis_server.url) as observer:
        response = await service.client.post(PATH, data=at_limit, headers=headers)
        assert (response.status, await response.json()) == (200, {"status": "applied"})
        await observer.published()
        over = at_limit + b"x"
        over_headers = headers | {
            "X-Twilio-Signature": twilio_signature(url, parse_qsl(over.decode()))
        }
        before = await observer.snapshot()
        for data in (over, _stream(over), _stream(b"x" * 10_000_000, 65536)):
            response = await service.client.post(PATH, data=data, headers=over_headers)
            assert response.status == 413
            assert await response.json() == {
                "error": "payload_too_large",
                "message": "the body is larger than 4096 bytes",
            }
        assert await observer.snapshot() == before
        assert await observer.published() == []


async def test_the_parameter_limit_is_exact_and_named(world: World) -> None:
    """200 parameters are read; 201 are a 400 naming the limit, in a form or in JSON, signed."""
    url = world.url()
    event = list(reachability("bounded", "E1", 1, True, connected=True).items())
    padded = [*event, *((f"P{n}", "v") for n in range(200 - len(event)))]
    assert len(padded) == 200
    status, reply = await world.post(
        "",
        _form(padded),
        [("Content-Type", FORM), ("X-Twilio-Signature", twilio_signature(url, padded))],
    )
    assert (status, reply) == (200, {"status": "applied"})
    await world.observer.published()
    too_many = [*padded, ("P999", "v")]
    over = {
        "error": "invalid_payload",
        "message": "body: has more than 200 parameters",
        "detail": [{"field": "body", "message": "has more than 200 parameters"}],
    }
    before = await world.observer.snapshot()
    status, reply = await world.post(
        "",
        _form(too_many),
        [("Content-Type", FORM), ("X-Twilio-Signature", twilio_signature(url, too_many))],
    )
    assert (status, reply) == (400, over)
    body = json.dumps(dict(too_many)).encode()
    query, signature = json_request(url, body)
    status, reply = await world.post(
        query, body, [("Content-Type", JSON), ("X-Twilio-Signature", signature)]
    )
    assert (status, reply) == (400, over)
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


@pytest.mark.parametrize("field", ["Identity", "EndpointId", "ItemKey"])
async def test_the_name_limit_counts_characters_and_names_the_field(
    world: World, field: str
) -> None:
    """1024 characters (4096 bytes of emoji) are a name; 1025 are a 400 naming the field."""
    url = world.url()
    event_type = "map_item_added" if field == "ItemKey" else "endpoint_connected"
    for length, expected in ((1024, 200), (1025, 400)):
        params = event_params(event_type, "limit-" + field, "E1", 1, True) | {field: "🙂" * length}
        pairs = list(params.items())
        status, reply = await world.post(
            "",
            _form(pairs),
            [("Content-Type", FORM), ("X-Twilio-Signature", twilio_signature(url, pairs))],
        )
        assert status == expected, reply
        if expected == 400:
            assert reply["detail"] == [
                {"field": field, "message": "must be at most 1024 characters"}
            ]
    if field == "Identity":
        found = await world.service.client.post(
            f"/v1/services/{SERVICE_SID}/lookup", json={"identities": ["🙂" * 1024]}
        )
        assert (await found.json())["identities"][0]["online"] is True


async def test_query_limits_name_themselves(start_service: Start) -> None:
    """More than 1000 names, a lookup body over 8 MiB, and a page over 1000 are refused with
    a message that names the limit."""
    service: RunningApp = await start_service()
    base = f"/v1/services/{SERVICE_SID}"
    response = await service.client.post(f"{base}/lookup", json={"identities": ["a"] * 1001})
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_body",
        "message": 'the body must be {"identities": [1 to 1000 names]}',
    }
    response = await service.client.get(f"{base}/online?limit=1001")
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_limit",
        "message": "limit must be an integer from 1 to 1000",
    }
    huge = b'{"identities": ["' + b"x" * (8 * 1024 * 1024) + b'"]}'
    for data in (io.BytesIO(huge), _stream(huge, 65536)):
        response = await service.client.post(f"{base}/lookup", data=data)
        assert response.status == 413
        reply = await response.json()
        assert reply["error"] == "payload_too_large"
        assert "8388608" in reply["message"], reply


# --- HTTP framing, byte by byte -----------------------------------------------------------


async def raw_exchange(service: RunningApp, request: bytes, wait: float = 1.0) -> bytes:
    """Sends bytes as they are; returns every byte of the reply (empty if none came)."""
    reader, writer = await asyncio.open_connection(service.client.host, service.client.port)
    writer.write(request)
    await writer.drain()
    try:
        reply = await asyncio.wait_for(reader.read(), wait)
    except (ConnectionResetError, TimeoutError):
        reply = b""
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    return reply


def _head(world: World, body: bytes, *extra: bytes) -> bytes:
    signature = twilio_signature(world.url(), form_pairs(body) or [])
    lines = [
        b"POST /webhooks/sync HTTP/1.1",
        b"Host: " + urlsplit(world.url()).netloc.encode(),
        b"Content-Type: " + FORM.encode(),
        b"X-Twilio-Signature: " + signature.encode(),
        b"Connection: close",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


FRAMINGS = [
    "Content-Length shorter than the body",
    "Content-Length longer than the body",
    "Content-Length and chunked",
    "broken chunked",
    "Content-Length not a number",
    "two Content-Lengths",
]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_a_body_framed_wrongly_changes_nothing(
    world: World, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the framing, the service never answers 5xx and never applies a body other
    than the one that was signed."""
    body = _form(MALLORY.items())
    size = str(len(body)).encode()
    if framing == "Content-Length shorter than the body":
        request = _head(world, body, b"Content-Length: %d" % (len(body) - 5)) + body
    elif framing == "Content-Length longer than the body":
        request = _head(world, body, b"Content-Length: %d" % (len(body) + 100)) + body
    elif framing == "Content-Length and chunked":
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        request = _head(world, body, b"Content-Length: " + size, b"Transfer-Encoding: chunked")
        request += chunked
    elif framing == "broken chunked":
        request = _head(world, body, b"Transfer-Encoding: chunked") + b"5\r\nEvent\r\nzz\r\n"
    elif framing == "Content-Length not a number":
        request = _head(world, body, b"Content-Length: 1_0") + body
    else:
        request = _head(world, body, b"Content-Length: " + size, b"Content-Length: 5") + body
    before = await world.observer.snapshot()
    with caplog.at_level(logging.ERROR):
        reply = await raw_exchange(world.service, request)
        await asyncio.sleep(0.2)  # a handler still reading when the client left, finishing
    if framing == "Content-Length longer than the body":
        assert reply == b""  # still waiting for the rest when the client gave up
    else:
        # aiohttp's own HTTP parser refuses it (in text, before any handler runs).
        assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply
    assert not [r for r in caplog.records if r.name.startswith("presence")], caplog.text
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []
