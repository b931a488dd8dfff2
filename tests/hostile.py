"""What the hostile-input tests share: the real HTTP server and the real Redis they run
against, an observer of that Redis byte for byte, and requests signed as Twilio signs them.

A plain module, not a test file, so that each file of the fuzz, signature attack, limit and
framing tests holds one subject and none repeats this.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.events import EVENT_TYPES
from presence.twilio.samples import ACCOUNT_SID, SERVICE_SID, collection_event, reachability
from tests.support import AUTH_TOKEN, RunningApp, sign

T = TypeVar("T")
Start = Callable[..., Any]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PATH = "/webhooks/sync"
SECOND_TOKEN = "abcdefabcdefabcdefabcdefabcdefab"
WRONG_TOKEN = "f" * 32
MARKER_CHANNEL = "presence:~hostile-marker"
OUTCOMES = {"applied", "duplicate", "stale", "ignored"}
REACHABILITY = ("endpoint_connected", "endpoint_disconnected")


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


def typed(params: dict[str, str]) -> dict[str, Any]:
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


# --- the world the examples run against ---------------------------------------------------

Snapshot = dict[bytes, tuple[bytes, Any]]
"""Every key: its DUMP (byte for byte) and its contents, read by type."""
ACTIVITY_KEYS = b"presence:act:"


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
        """Every key but the webhook outcomes each process adds up and writes every two
        seconds (``presence.activity``), whatever the webhook under test did: that it counts
        only signed webhooks is tests/test_activity.py's to prove."""
        keys = sorted(
            [
                key
                async for key in self.redis.scan_iter(count=1000)
                if not key.startswith(ACTIVITY_KEYS)
            ]
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.dump(key)
                pipe.type(key)
            replies = await pipe.execute()
        dumps, types = replies[0::2], replies[1::2]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, kind in zip(keys, types, strict=True):
                readers: dict[bytes, Callable[[str], Any]] = {
                    b"hash": pipe.hgetall,
                    b"zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
                    b"string": pipe.get,
                    b"set": pipe.smembers,
                    b"stream": pipe.xrange,
                }
                read = readers.get(kind, pipe.type)
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
    if kind == b"stream":
        return [(entry_id, tuple(sorted(fields.items()))) for entry_id, fields in content]
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


def json_request(url: str, body: bytes, token: str = AUTH_TOKEN) -> tuple[str, str]:
    """The query and the signature Twilio sends with a JSON body (``bodySHA256``)."""
    query = "?bodySHA256=" + hashlib.sha256(body).hexdigest()
    return query, sign(url + query, [], token)


def other_url(url: str, how: str) -> str:
    parts = urlsplit(url)
    if how == "other_path":
        return urlunsplit(parts._replace(path=parts.path + "/"))
    if how == "other_host":
        return urlunsplit(parts._replace(netloc="evil.example:" + str(parts.port)))
    if how == "https":
        return urlunsplit(parts._replace(scheme="https"))
    return urlunsplit(parts._replace(query=(parts.query + "&" if parts.query else "") + "y=2"))


MALLORY = reachability("mallory", "E1", 7, True, connected=True)
"""What an attacker would like applied: an identity online that is not."""


def form_body(pairs: Iterable[tuple[str, str]]) -> bytes:
    return urlencode(list(pairs)).encode()


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
