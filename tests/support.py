"""Helpers shared by the tests: a real redis-server, a manual clock, Twilio-signed webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis, RedisCluster
from twilio.request_validator import RequestValidator

from presence.keys import Keyspace
from presence.store.redis import RedisStore

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "IS" + "fedcba9876543210" * 2
OTHER_SERVICE_SID = "IS" + "00112233445566778899aabbccddeeff"
DOCUMENT_SID = "ET" + "1" * 32
LIST_SID = "ES" + "2" * 32
MAP_SID = "MP" + "3" * 32
AUTH_TOKEN = "12345678901234567890123456789012"


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, deadline_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


class RedisServer:
    """A redis-server of the test suite's own: a free port, a private directory, stopped by
    its own pid. ``appendonly`` keeps state across ``stop``/``start``."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/test, which installs it")
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None


class RedisClusterNodes:
    """A Redis Cluster of the test suite's own: ``size`` primaries (no replicas), each a
    redis-server on free ports (client and cluster bus) in a private directory, stopped by
    their own pids. ``cluster-require-full-coverage no``: while a node is down, the slots of
    the others keep working. A short ``cluster-node-timeout`` makes failures known quickly."""

    def __init__(self, directory: Path, size: int = 3, node_timeout_ms: int = 1000) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed: run scripts/test")
        self.binary, self.cli = binary, cli
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_port() for _ in range(size)]
        self.bus_ports = [free_port() for _ in range(size)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A URL naming the first node: a cluster client finds the others by itself."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def url_of(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}"

    def start_node(self, port: int) -> None:
        bus_port = self.bus_ports[self.ports.index(port)]
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port", str(port),
            "--cluster-port", str(bus_port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(port)

    def kill_node(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def _cli(self, port: int, *args: str) -> str:
        result = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def state_of(self, port: int) -> str:
        """``cluster_state`` as this node sees it (``ok`` or ``fail``), "" when unreachable."""
        try:
            info = self._cli(port, "cluster", "info")
        except (subprocess.SubprocessError, OSError):
            return ""
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_until_ok(self, within: float = 30.0) -> None:
        """Waits until every running node says ``cluster_state:ok``."""
        deadline = time.monotonic() + within
        while not all(self.state_of(port) == "ok" for port in self.processes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test cluster did not become ok within {within}s")
            time.sleep(0.05)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.wait_until_ok()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill_node(port)


def make_store(
    client: Redis | RedisCluster,
    clock: ManualClock | None,
    *,
    grace: float = 10,
    ttl: float = 7200,
    prefix: str = "presence",
) -> RedisStore:
    """A store on ``client``; with a ``clock``, time moves only when the test moves it."""
    return RedisStore(
        client,
        Keyspace(prefix),
        offline_grace_ms=round(grace * 1000),
        endpoint_ttl_ms=round(ttl * 1000),
        clock=clock,
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


def reachability(
    identity: str,
    endpoint: str,
    event_id: int,
    online: bool,
    *,
    connected: bool,
    service_sid: str = SERVICE_SID,
) -> dict[str, str]:
    """The form parameters of an endpoint_connected / endpoint_disconnected webhook."""
    return {
        "AccountSid": ACCOUNT_SID,
        "ServiceSid": service_sid,
        "EventType": "endpoint_connected" if connected else "endpoint_disconnected",
        "Identity": identity,
        "EndpointId": endpoint,
        "EventId": str(event_id),
        "IsIdentityOnline": "true" if online else "false",
    }


def collection_event(event_type: str, **extra: str) -> dict[str, str]:
    """Valid form parameters of a document, list or map event."""
    params = {
        "AccountSid": ACCOUNT_SID,
        "ServiceSid": SERVICE_SID,
        "EventType": event_type,
        "Identity": "alice",
        "EndpointId": "EP-alice-1",
    }
    kind = event_type.split("_")[0]
    if kind == "document":
        params |= {"DocumentSid": DOCUMENT_SID, "DocumentRevision": "3"}
        params |= {"DocumentUniqueName": "settings"}
        if event_type != "document_removed":
            params["DocumentData"] = json.dumps({"theme": "dark", "size": [1, 2]})
    elif kind == "list":
        params |= {"ListSid": LIST_SID, "ListRevision": "7", "ListUniqueName": "todo"}
    else:
        params |= {"MapSid": MAP_SID, "MapRevision": "5", "MapUniqueName": "scores"}
    if "_item_" in event_type:
        params["EventId"] = "11"
        params["ItemIndex" if kind == "list" else "ItemKey"] = "4" if kind == "list" else "k1"
        if not event_type.endswith("_removed"):
            params |= {"ItemRevision": "2", "ItemData": json.dumps({"text": "milk"})}
    return params | extra


def sign(url: str, params: Mapping[str, str] | None, token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature as Twilio's own helper library computes it."""
    signature: str = RequestValidator(token).compute_signature(url, dict(params or {}))
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


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a JSON-lines log, parsed (fails on a line that is not JSON)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a ``presence`` subprocess: this one's, minus PRESENCE_*, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update({f"PRESENCE_{name.upper()}": value for name, value in settings.items()})
    return env


class Service:
    """A ``presence serve`` subprocess on its own port, its output in a file."""

    def __init__(self, log: Path, **settings: str) -> None:
        self.port = free_port()
        self.log = log
        self.env = service_env(port=str(self.port), **settings)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *flags: str) -> Service:
        """Starts the process (with these command-line flags) and waits for its port."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "presence", "serve", *flags],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, 20.0)
        return self

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=15)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


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
