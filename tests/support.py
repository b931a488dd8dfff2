"""Helpers shared by the tests: the service on a real HTTP server, a manual clock, Twilio-signed
webhooks, pub/sub recorders. The processes they start (redis-server, a Redis Cluster,
``presence serve``) come from ``harness``, shared with the benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis, RedisCluster
from twilio.request_validator import RequestValidator

from harness.processes import service_env
from presence.feed.hub import FeedSource
from presence.keys import Keyspace
from presence.metrics import Metrics
from presence.push.leases import Leases
from presence.store.redis import RedisStore
from presence.web.runner import ServiceRunner

OTHER_SERVICE_SID = "IS" + "00112233445566778899aabbccddeeff"
AUTH_TOKEN = "12345678901234567890123456789012"


class ServiceServer(TestServer):
    """aiohttp's test server, running the app as ``presence serve`` does: webhooks below the
    router (``ServiceRunner``)."""

    async def _make_runner(self, **kwargs: Any) -> ServiceRunner:
        return ServiceRunner(self.app, **kwargs)


async def serve_app(
    aiohttp_client: AiohttpClient, app: web.Application
) -> TestClient[web.Request, web.Application]:
    """A client of ``app``, served as ``presence serve`` serves it (``ServiceServer``)."""
    client: Any = await aiohttp_client(ServiceServer(app))
    # The fixture types a client of a server as one of no app; this server has one.
    return cast("TestClient[web.Request, web.Application]", client)


@dataclass
class RunningApp:
    """The service on a real HTTP server, and a client of it."""

    client: TestClient[web.Request, web.Application]
    store: RedisStore

    @property
    def webhook_url(self) -> str:
        return str(self.client.make_url("/webhooks/sync"))

    async def post_signed(
        self, params: Mapping[str, str], token: str = AUTH_TOKEN, **headers: str
    ) -> ClientResponse:
        """POSTs a webhook signed as Twilio signs it for this server's URL."""
        request = signed_form(self.webhook_url, params, token)
        request["headers"].update(headers)
        return await self.client.post("/webhooks/sync", **request)

    async def status_of(self, params: Mapping[str, str], **headers: str) -> str:
        """The status of the 200 reply to a signed webhook."""
        response = await self.post_signed(params, **headers)
        assert response.status == 200, await response.text()
        body = await response.json()
        status: str = body["status"]
        return status


def make_store(
    client: Redis | RedisCluster,
    clock: ManualClock | None,
    *,
    grace: float = 10,
    ttl: float = 7200,
    prefix: str = "presence",
    retention: float = 86_400,
) -> RedisStore:
    """A store on ``client``; with a ``clock``, time moves only when the test moves it."""
    return RedisStore(
        client,
        Keyspace(prefix),
        offline_grace_ms=round(grace * 1000),
        endpoint_ttl_ms=round(ttl * 1000),
        feed_retention_ms=round(retention * 1000),
        clock=clock,
    )


def leases_on(store: RedisStore, feed: FeedSource | None = None) -> Leases:
    """A replica's push leases on ``store``, its deliveries reading ``feed`` (else the
    store's own), to private addresses, without wake-ups (they poll)."""
    return Leases(
        store.subscriptions,
        store if feed is None else feed,
        Metrics(),
        concurrency=4,
        timeout_seconds=1,
        allow_private=True,
        retention_ms=store.retention_ms,
    )


def manual_clock(start_ms: int = 1_795_000_000_000) -> ManualClock:
    return ManualClock(start_ms)


class ManualClock:
    """A clock the test moves by hand: passed to the store, it replaces Redis' clock."""

    def __init__(self, start_ms: int) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += round(seconds * 1000)


def sign(
    url: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
    token: str = AUTH_TOKEN,
    algorithm: str | None = None,
) -> str:
    """X-Twilio-Signature as Twilio's own helper library computes it, for every test: the
    parameters as a mapping, or as pairs (a name may come more than once); HMAC-SHA1 unless
    ``algorithm`` says ``HMAC_SHA256``."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    validator = RequestValidator(token)
    if algorithm is None:
        signature: str = validator.compute_signature(url, MultiDict(pairs))
    else:
        signature = validator.compute_signature(url, MultiDict(pairs), algorithm)
    return signature


def signed_form(url: str, params: Mapping[str, str], token: str = AUTH_TOKEN) -> dict[str, Any]:
    """Keyword arguments for an aiohttp client POST of a signed form webhook."""
    return {
        "data": urlencode(params),
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(url, params, token),
        },
    }


class ChangeRecorder:
    """Collects every message published on a channel, from its own subscription.

    ``sync()`` publishes a marker after whatever the test did and waits for it: messages are
    delivered in order, so once the marker is in, everything published before it is too.
    On a Redis Cluster, messages published on other nodes reach the subscription through
    the cluster bus, in order per node only: the marker is published on every node, and
    ``sync()`` waits for each copy.
    """

    def __init__(self, redis: Redis | RedisCluster, channel: str = "presence:changes") -> None:
        self.redis = redis
        self.channel = channel
        self.received: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._markers = 0
        self._stop = False

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [message for message in self.received if "test_marker" not in message]

    async def sync(self) -> list[dict[str, Any]]:
        """Every message published so far."""
        self._markers += 1
        marker = {"test_marker": self._markers}
        copies = 1
        if isinstance(self.redis, RedisCluster):
            primaries = self.redis.get_primaries()
            copies = len(primaries)
            await self.redis.publish(self.channel, json.dumps(marker), target_nodes=primaries)
        else:
            await self.redis.publish(self.channel, json.dumps(marker))
        await wait_until(lambda: self.received.count(marker) >= copies, 5.0, "the marker message")
        return self.messages

    async def __aenter__(self) -> ChangeRecorder:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        self._task = asyncio.create_task(self._listen(pubsub))
        return self

    async def _listen(self, pubsub: Any) -> None:
        try:
            while not self._stop:
                message = await pubsub.get_message(timeout=0.05)
                if message is not None:
                    self.received.append(json.loads(message["data"]))
        finally:
            await pubsub.aclose()

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._stop = True
        await self._task

    async def wait_for(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """The messages once there are at least ``count`` (fails after ``within`` seconds)."""
        await wait_until(lambda: len(self.messages) >= count, within, f"{count} messages")
        return self.messages


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Polls ``condition`` until it holds; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def post_webhook(
    base_url: str, params: Mapping[str, str], token: str = AUTH_TOKEN
) -> tuple[int, dict[str, Any]]:
    """POSTs a webhook signed for ``base_url``/webhooks/sync, on a connection of its own;
    returns the status and the JSON reply."""
    url = f"{base_url}/webhooks/sync"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(url, params, token),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=urlencode(params), headers=headers) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def online_names(get: Callable[..., Any], url: str, headers: Mapping[str, str]) -> set[str]:
    """Who ``url`` (a service's ``/online``) lists over all its pages; ``get`` is a
    ClientSession's or a TestClient's (each takes a URL, params and headers)."""
    names: set[str] = set()
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with get(url, params=params, headers=headers) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        names |= set(page["identities"])
        cursor = page["next_cursor"]
        if cursor is None:
            return names


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON-lines log, parsed (fails on a line that is not JSON)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Watcher:
    """A ``presence watch`` process whose output lines are collected as they come."""

    def __init__(self, *args: str, **settings: str) -> None:
        self.args = args
        self.settings = settings
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "presence",
            "watch",
            *self.args,
            env=service_env(**self.settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    def changes(self) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines]
        return [change for change in parsed if "identity" in change]

    async def until_subscribed(self, redis_url: str) -> None:
        """Publishes probes on the changes channel until this watcher prints one."""
        redis = Redis.from_url(redis_url, decode_responses=True)
        probe = json.dumps({"probe": time.monotonic()})
        try:

            async def seen() -> bool:
                if probe in self.lines:
                    return True
                with contextlib.suppress(Exception):
                    await redis.publish(Keyspace().changes_channel, probe)
                return False

            await wait_until(seen, 15, "presence watch to print a probe")
        finally:
            await redis.aclose()

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        assert self._reader is not None
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class EventStream:
    """A Server-Sent Events client of the change feed, reading events as they come (its own
    parser of the wire format, independent of the service's)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, **request: Any) -> None:
        self.url = url
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        self.request = request
        self.events: list[ServerSentEvent] = []
        self.comments: list[str] = []
        self.ids: list[str] = []
        """Every ``id:`` received, with an event or alone."""
        self.status = 0
        self.response: aiohttp.ClientResponse | None = None
        self.ended = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        response = await self._session.request(
            self.request.pop("method", "GET"), self.url, headers=self.headers, **self.request
        )
        self.status = response.status
        self.content_type = response.content_type
        self.response = response
        if response.status == 200:
            self._task = asyncio.create_task(self._read(response))
        else:
            self.ended.set()
        return self

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        fields: dict[str, list[str]] = {}
        try:
            async for raw in response.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value.removeprefix(" "))
                else:
                    if "id" in fields:
                        self.ids.append(fields["id"][-1])
                    if "data" in fields:
                        self.events.append(
                            ServerSentEvent(
                                fields.get("event", ["message"])[-1],
                                "\n".join(fields["data"]),
                                fields.get("id", [None])[-1],
                            )
                        )
                    fields = {}
        except (aiohttp.ClientError, ConnectionResetError):
            pass
        finally:
            self.ended.set()

    def changes(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event == "change"]

    async def wait_for(self, count: int, within: float = 10.0) -> list[ServerSentEvent]:
        await wait_until(lambda: len(self.events) >= count, within, f"{count} events")
        return self.events

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.response is not None:
            self.response.close()
        if self._session is not None:
            await self._session.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
