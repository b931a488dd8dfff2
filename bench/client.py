"""Row "client": what one client of the change feed costs, the Python one and the JavaScript one
in Node: the changes per second it takes in (each parsed, checked against the version held,
applied and given to its hook) when the feed brings them as fast as it can read them, and its
memory per 10,000 identities held.

The feed is a stand-in served by this harness (``StandIn``: the listing of ``/online`` and a
stream of events written in advance, as the service writes them), so the figure is the
client's own ceiling, not the service's (row "feed" measures the service). Each client runs
in a process of its own (``bench/client_follow.py``, ``bench/client_follow.mjs``), alone on
the server core; the harness is on the other.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.support import PYTHON, ROOT, log, pinned
from harness.processes import free_port
from presence.twilio.samples import SERVICE_SID

CHANGES = 300_000
"""Changes in the stream of the speed run."""
FOLLOWED = 10_000
"""Identities the speed run's changes are about (all held online by its listing first)."""
HELD = 100_000
"""Identities in the listing of the memory run."""
CHUNK = 256 * 1024
NODE_SCRIPT = ROOT / "bench" / "client_follow.mjs"


def name(n: int) -> str:
    return f"client-identity-{n:06d}"


def event_stream(changes: int, identities: int) -> bytes:
    """The events of ``changes`` changes, each identity's online and offline in turn, its
    versions from 2 up (1 is the listing's), written as the service writes them."""
    lines = []
    for n in range(changes):
        identity, turn = n % identities, n // identities
        data = json.dumps(
            {
                "service_sid": SERVICE_SID,
                "identity": name(identity),
                "online": turn % 2 == 1,
                "reason": "connected" if turn % 2 == 1 else "disconnected",
                "event_id": n + 1,
                "version": turn + 2,
                "changed_at": "2026-11-23T10:00:00.123Z",
            },
            separators=(",", ":"),
        )
        cursor = f"AgAAAaJNuc1cAAAAAAAAAAB3HWwVsQ{n:08d}"  # as long as the service's
        lines.append(f"id: {cursor}\r\nevent: change\r\ndata: {data}\r\n\r\n")
    return "".join(lines).encode()


class StandIn:
    """The service as a client sees it: ``held`` identities listed online (version 1), and a
    stream of ``body``; the stream stays open once written, as a service's does."""

    def __init__(self, held: int, body: bytes) -> None:
        self.held = held
        self.body = body
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> StandIn:
        app = web.Application()
        base = f"/v1/services/{SERVICE_SID}"
        app.router.add_get(base + "/online", self.online)
        app.router.add_get(base + "/changes", self.changes)
        self._runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def online(self, request: web.Request) -> web.Response:
        page = int(request.query.get("cursor", "0"))
        limit = int(request.query.get("limit", "100"))
        start, end = page * limit, min(self.held, (page + 1) * limit)
        listed = [{"identity": name(n), "version": 1} for n in range(start, end)]
        more = end < self.held
        reply = {"identities": listed, "next_cursor": str(page + 1) if more else None}
        return web.json_response(reply | {"feed_cursor": "AgAAAaJNuc1cAAAAAAAAAAB3HWwVsQKT3uoA"})

    async def changes(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(self.body), CHUNK):
            await response.write(self.body[start : start + CHUNK])
        while True:  # until the client goes (the handler is cancelled then)
            await asyncio.sleep(5)
            await response.write(b": ping\r\n\r\n")


async def _follow(command: list[str], stand_in: StandIn, mode: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        *pinned("server", [*command, stand_in.url, SERVICE_SID, mode, str(CHANGES)]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(process.communicate(), 600)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} {mode}: exit {process.returncode}: {err[-2000:]!r}")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


async def _measure(kind: str, command: list[str]) -> dict[str, Any]:
    body = event_stream(CHANGES, FOLLOWED)
    speed = await StandIn(FOLLOWED, body).start()
    try:
        log(f"client: {kind}, {CHANGES:,} changes about {FOLLOWED:,} identities")
        taken = await _follow(command, speed, "speed")
    finally:
        await speed.close()
    memory = await StandIn(HELD, b"").start()
    try:
        log(f"client: {kind}, {HELD:,} identities held")
        held = await _follow(command, memory, "memory")
    finally:
        await memory.close()
    per_10k = 10_000 / HELD
    return {
        "changes": taken["changes"],
        "seconds": taken["seconds"],
        "changes_per_s": round(taken["changes"] / taken["seconds"]),
        "cpu_s": taken["cpu_seconds"],
        "event_bytes": round(len(body) / CHANGES),
        "identities_held": held["held"],
        "rss_bytes_per_10k": round(held["rss_delta"] * per_10k),
        "heap_bytes_per_10k": round(held["heap_delta"] * per_10k),
    }


def run(workdir: Path) -> dict[str, Any]:
    del workdir  # nothing written: the stand-in serves from memory
    results: dict[str, Any] = {
        "python": asyncio.run(_measure("python", [PYTHON, "-m", "bench.client_follow"]))
    }
    node = shutil.which("node")
    if node is not None:
        script = ["--expose-gc", str(NODE_SCRIPT)]
        results["node"] = asyncio.run(_measure("node", [node, *script]))
    results["python_version"] = sys.version.split()[0]
    return results
