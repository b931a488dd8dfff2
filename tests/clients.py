"""What the tests of the clients share: a deployment of real processes (a redis-server with an
append-only file, ``presence serve`` replicas, a TCP proxy in front of them that can cut every
connection), an HTTP proxy that holds replies back until they are whole (as a buffering proxy
does to a stream), and the two clients behind one interface: the Python view in this process,
and the JavaScript view in a Node process (``tests/follower.mjs``) printing what its hooks get
as JSON lines.

A plain module, not a test file: tests/test_clients.py runs each scenario on both clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
from aiohttp import web

from harness.processes import RedisServer, Service, free_port
from presence.twilio.samples import SERVICE_SID, reachability
from presence_client import Change, PresenceView
from tests.support import AUTH_TOKEN, online_names, post_webhook, wait_until

ROOT = Path(__file__).resolve().parent.parent
FOLLOWER = ROOT / "tests" / "follower.mjs"
TOKEN = "clients-token"

Kind = Literal["python", "node"]


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node is not installed: scripts/test installs Debian's nodejs")
    return found


# ---------------------------------------------------------------------------------------------
# Proxies


class CuttingProxy:
    """A TCP proxy on a free port in front of some replicas: each connection goes to the first
    of them that accepts, taking turns; ``cut`` aborts every open connection (both sides, as a
    load balancer or a NAT that drops them); while ``refusing``, a new connection is closed as
    soon as it is accepted."""

    def __init__(self, ports: Iterable[int]) -> None:
        self.ports = list(ports)
        self.port = free_port()
        self.refusing = False
        self.cuts = 0
        """Connections aborted by ``cut``."""
        self.requests: list[tuple[str, str]] = []
        """The method and path of each request that went through (as its first bytes say)."""
        self._turn = 0
        self._open: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        """Each open connection's client side, and the replica's side of it."""
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._cut_calls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    def cut(self) -> int:
        """Aborts every connection open; returns how many there were."""
        self._cut_calls += 1
        count = 0
        for client, replica in list(self._open.items()):
            client.transport.abort()
            replica.transport.abort()
            count += 1
        self.cuts += count
        return count

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        # Each connection's handler ends once its sides are aborted: awaited, not left behind.
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        if self.refusing:
            writer.transport.abort()
            return
        cut_before = self._cut_calls
        upstream = await self._connect()
        if upstream is None or self.refusing or self._cut_calls != cut_before:
            # Cut (or told to refuse) while it was connecting: not in the open connections
            # yet, it must not slip through either.
            if upstream is not None:
                upstream[1].transport.abort()
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._open[writer] = up_writer
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, self.requests), _pipe(up_reader, writer, None)
            )
        finally:
            self._open.pop(writer, None)
            for side in (writer, up_writer):
                side.transport.abort()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        return None


REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.1\r$", re.MULTILINE)


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    requests: list[tuple[str, str]] | None,
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await source.read(65536):
            if requests is not None:
                requests += [(m[1].decode(), m[2].decode()) for m in REQUEST_LINE.finditer(data)]
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError):
        sink.write_eof()


class HttpProxy:
    """An HTTP proxy in front of one replica. ``hold``: each reply is sent once it has been
    read whole, so a long-poll comes through and a stream never does (a buffering proxy).
    Otherwise replies go through as they come, each page of ``/online`` ``listing_delay``
    seconds late (a listing read slowly, while changes are made)."""

    def __init__(self, upstream: str, *, hold: bool = False, listing_delay: float = 0.0) -> None:
        self.upstream = upstream
        self.hold = hold
        self.listing_delay = listing_delay
        self.port = free_port()
        self.streams_held = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HttpProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        streaming = "text/event-stream" in request.headers.get("Accept", "")
        self.streams_held += streaming and self.hold
        if request.path.endswith("/online"):
            await asyncio.sleep(self.listing_delay)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name in ("Authorization", "Accept", "Last-Event-ID", "Content-Type")
        }
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
        ) as reply:
            if self.hold or not streaming:
                body = await reply.read()
                return web.Response(body=body, status=reply.status, content_type=reply.content_type)
            response = web.StreamResponse(status=reply.status)
            response.content_type = reply.content_type
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                async for chunk in reply.content.iter_any():
                    await response.write(chunk)
            return response


# ---------------------------------------------------------------------------------------------
# A deployment


class Deployment:
    """A redis-server (append-only, fsync at every write: a restart keeps every write
    answered), ``replicas`` ``presence serve`` processes on it with an API token, and a
    cutting proxy in front of them."""

    def __init__(self, directory: Path, *, replicas: int = 2, **settings: str) -> None:
        self.directory = directory
        self.redis = RedisServer(directory / "redis", appendonly=True)
        self.settings = {"offline_grace_seconds": "0", **settings}
        self.replicas = [
            Service(
                directory / f"replica-{n}.log",
                redis_url=self.redis.url,
                twilio_auth_token=AUTH_TOKEN,
                api_token=TOKEN,
                **self.settings,
            )
            for n in range(replicas)
        ]
        self.proxy = CuttingProxy(replica.port for replica in self.replicas)
        self.event_ids: dict[str, int] = {}

    async def start(self) -> Deployment:
        self.redis.start()
        for replica in self.replicas:
            replica.start()
        await self.proxy.start()
        return self

    async def stop(self) -> None:
        await self.proxy.close()
        for replica in self.replicas:
            replica.stop()
        self.redis.stop()

    @property
    def running(self) -> Service:
        """A replica that runs."""
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                return replica
        raise AssertionError("no replica runs")

    async def flip(self, name: str, online: bool) -> None:
        """A connect (online) or a disconnect of ``name``'s endpoint, with its next EventId,
        through a running replica; sent again while Redis is away (a 503), as Twilio would."""
        event_id = self.event_ids.get(name, 0) + 1
        self.event_ids[name] = event_id
        params = reachability(name, "E1", event_id, online, connected=online)

        async def applied() -> bool:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                status, body = await post_webhook(self.running.url, params)
                if status == 200:
                    assert body["status"] in ("applied", "duplicate"), body
                    return True
                assert status == 503, (status, body)
            return False

        await wait_until(applied, 30, f"the webhook of {name} to be applied")

    async def listed(self) -> set[str]:
        """Who ``/online`` lists, read through a running replica."""
        url = f"{self.running.url}/v1/services/{SERVICE_SID}/online"
        async with aiohttp.ClientSession() as session:
            return await online_names(session.get, url, {"Authorization": f"Bearer {TOKEN}"})


# ---------------------------------------------------------------------------------------------
# The clients


class Follower(Protocol):
    """A client's view, started, and what its hooks were given, in order."""

    kind: Kind
    initial: set[str]
    """Who the view held online when it started."""
    initial_versions: dict[str, int]
    """Their versions then."""
    events: list[dict[str, Any]]
    """``{"kind": "change", "identity", "version", "online", "resync"}`` and
    ``{"kind": "reset", "reason"}``, as the hooks were called."""

    async def online(self) -> set[str]: ...

    async def transport(self) -> str: ...

    async def close(self) -> None: ...


@dataclass
class Options:
    """How a view is made: the service's URL and the view's options."""

    url: str
    token: str | None = TOKEN
    identities: list[str] | None = None
    transport: str = "auto"
    silence_seconds: float = 30.0


def change_event(change: Change) -> dict[str, Any]:
    return {
        "kind": "change",
        "identity": change.identity,
        "version": change.version,
        "online": change.online,
        "resync": change.resync,
    }


@dataclass
class PythonFollower:
    """The Python view, in this process."""

    options: Options
    kind: Kind = "python"
    initial: set[str] = field(default_factory=set)
    initial_versions: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    view: PresenceView | None = None

    async def start(self) -> PythonFollower:
        options = self.options
        view = PresenceView(
            options.url,
            SERVICE_SID,
            token=options.token,
            identities=options.identities,
            transport=options.transport,  # type: ignore[arg-type]
            silence_seconds=options.silence_seconds,
            on_change=lambda change: self.events.append(change_event(change)),
            on_reset=lambda reason: self.events.append({"kind": "reset", "reason": reason}),
        )
        await view.start()
        self.view = view
        self.initial = set(view.online())
        self.initial_versions = {name: view.version(name) for name in self.initial}
        return self

    async def online(self) -> set[str]:
        assert self.view is not None
        return set(self.view.online())

    async def transport(self) -> str:
        assert self.view is not None
        return self.view.transport

    async def close(self) -> None:
        if self.view is not None:
            await self.view.close()


class NodeRefused(Exception):
    """The Node follower could not start: the service refused it."""


@dataclass
class NodeFollower:
    """The JavaScript view, in a Node process of its own (``tests/follower.mjs``): its hooks'
    calls come as JSON lines on its output; ``state`` on its input asks for what it holds."""

    options: Options
    kind: Kind = "node"
    initial: set[str] = field(default_factory=set)
    initial_versions: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    """What the view's status hook was told (for a failure's message)."""
    process: asyncio.subprocess.Process | None = None
    _states: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _ready: asyncio.Future[dict[str, Any]] | None = None
    _reader: asyncio.Task[None] | None = None
    _asking: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> NodeFollower:
        options = self.options
        argument = {
            "url": options.url,
            "serviceSid": SERVICE_SID,
            "token": options.token,
            "identities": options.identities,
            "transport": options.transport,
            "silenceMs": round(options.silence_seconds * 1000),
        }
        self._ready = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            node(),
            str(FOLLOWER),
            json.dumps(argument),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=os.environ | {"NODE_NO_WARNINGS": "1"},
            limit=64 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), 30)
        except BaseException:
            await self.close()
            raise
        if ready["kind"] == "error":
            await self.close()
            raise NodeRefused(ready["message"])
        self.initial = set(ready["online"])
        self.initial_versions = dict(ready["versions"])
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = json.loads(raw)
            kind = line["kind"]
            if kind in ("ready", "error") and self._ready is not None and not self._ready.done():
                self._ready.set_result(line)
            elif kind == "state":
                self._states.put_nowait(line)
            elif kind in ("change", "reset"):
                self.events.append(line)
            elif kind == "status":
                self.statuses.append(f"{line['state']} {line['error']}".strip())
        if self._ready is not None and not self._ready.done():
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            self._ready.set_exception(RuntimeError(f"the follower exited: {stderr[-2000:]!r}"))

    async def _state(self) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdin is not None
        async with self._asking:
            self.process.stdin.write(b"state\n")
            await self.process.stdin.drain()
            return await asyncio.wait_for(self._states.get(), 30)

    async def online(self) -> set[str]:
        return set((await self._state())["online"])

    async def transport(self) -> str:
        return str((await self._state())["transport"])

    async def close(self) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # the follower closes its view and exits
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def follower(kind: Kind, options: Options) -> Follower:
    """A started view of the service at ``options.url``, of that kind."""
    if kind == "python":
        return await PythonFollower(options).start()
    return await NodeFollower(options).start()


# ---------------------------------------------------------------------------------------------
# What every client must show


async def until_equal(client: Follower, deployment: Deployment, within: float = 30.0) -> set[str]:
    """Waits until the client holds exactly who ``/online`` lists; returns them."""
    wanted: set[str] = set()

    async def equal() -> bool:
        nonlocal wanted
        wanted = await deployment.listed()
        return await client.online() == wanted

    try:
        await wait_until(equal, within, f"the {client.kind} view to equal /online")
    except AssertionError as error:
        held = await client.online()
        statuses = getattr(client, "statuses", [])[-6:]
        raise AssertionError(
            f"{error}: it holds {sorted(held)}, /online lists {sorted(wanted)}; "
            f"its last hook calls: {client.events[-6:]}; its last statuses: {statuses}"
        ) from None
    return wanted


def replayed(client: Follower) -> set[str]:
    """Who is online by the hooks alone: the view's start, and every change given since."""
    online = set(client.initial)
    for event in client.events:
        if event["kind"] == "change":
            (online.add if event["online"] else online.discard)(event["identity"])
    return online


def repeated(client: Follower) -> list[tuple[str, int]]:
    """Changes given to the hook although the view held their identity at that version or
    above: given twice, or already in the snapshot the view started from (after a reset, a
    version may be used again for another change)."""
    held = dict(client.initial_versions)
    twice: list[tuple[str, int]] = []
    for event in client.events:
        if event["kind"] == "reset":
            held = {}
        elif event["resync"]:
            held[event["identity"]] = event["version"]
        else:
            key = (event["identity"], event["version"])
            if event["version"] <= held.get(event["identity"], 0):
                twice.append(key)
            held[event["identity"]] = event["version"]
    return twice


async def check_exact(client: Follower, deployment: Deployment) -> set[str]:
    """The client ends equal to ``/online``, its hooks tell the same, and none was given a
    change twice; returns who is online."""
    online = await until_equal(client, deployment)
    assert replayed(client) == online, client.kind
    assert repeated(client) == [], client.kind
    return online


def resets(client: Follower) -> list[str]:
    return [event["reason"] for event in client.events if event["kind"] == "reset"]
