"""A push receiver of the test's own: an aiohttp server on a free port that verifies every
request with the ``standardwebhooks`` package from PyPI (never with the service's own
signer), answers as the test asks (500 at random, too slow, 410, down), and keeps what came.

Its view is what a receiver following the docs holds: the listing it read before
subscribing, plus every change pushed, applied only above the version held, each
``webhook-id`` once."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from harness.processes import free_port


@dataclass(frozen=True)
class Request:
    """One request that came: its event, when, what it was answered, and which of the
    secrets given verified it."""

    webhook_id: str
    event: dict[str, Any]
    at: float
    """When it was answered (monotonic)."""
    status: int
    arrived: float
    """When it came, before it was read or answered (monotonic)."""
    verified_by: tuple[int, ...]
    user_agent: str
    slow: bool = False
    """Answered after ``slow_seconds``: past the sender's timeout, a failed attempt to it."""

    @property
    def type(self) -> str:
        return str(self.event["type"])


@dataclass
class Receiver:
    secrets: list[str] = field(default_factory=list)
    """The secrets a request is verified with; a request none verifies is answered 401."""
    fail_ratio: float = 0.0
    """Of the requests, this share is answered 500, at random."""
    slow_ratio: float = 0.0
    """... and this share answered only after ``slow_seconds`` (past the timeout)."""
    slow_seconds: float = 0.0
    status: int | None = None
    """Answer every request with this status (410, say)."""
    refused: set[str] = field(default_factory=set)
    """Changes of these identities are answered 500."""
    seed: int = 7
    requests: list[Request] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/presence"

    async def start(self) -> Receiver:
        """Starts listening (again, after ``down``)."""
        app = web.Application()
        app.router.add_post("/hooks/presence", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def down(self) -> None:
        """Stops listening: every attempt now fails to connect."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _refused(self, body: bytes) -> bool:
        return json.loads(body).get("data", {}).get("identity") in self.refused

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        verified = []
        for index, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        status = 200
        slow = False
        roll = self._rng.random()
        if not verified:
            status = 401
        elif self.status is not None:
            status = self.status
        elif roll < self.fail_ratio or self._refused(body):
            status = 500
        elif roll < self.fail_ratio + self.slow_ratio:
            slow = True
            await asyncio.sleep(self.slow_seconds)
        response = web.Response(status=status)
        try:
            # Written before it is recorded: a receiver going down may record a 2xx that never
            # reached the sender, which, for the sender, failed.
            await response.prepare(request)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            status = 0
        self.requests.append(
            Request(
                headers.get("webhook-id", ""),
                json.loads(body),
                time.monotonic(),
                status,
                arrived,
                tuple(verified),
                headers.get("user-agent", ""),
                slow,
            )
        )
        return response

    # -- what came --------------------------------------------------------------------------

    def acknowledged(self, kind: str = "presence.changed") -> list[Request]:
        """Requests answered 2xx (once per webhook-id), in the order they came."""
        seen: set[str] = set()
        found = []
        for request in self.requests:
            acked = request.type == kind and 200 <= request.status < 300
            if acked and request.webhook_id not in seen:
                seen.add(request.webhook_id)
                found.append(request)
        return found

    def view(self, listing: dict[str, int]) -> set[str]:
        """Who is online, for a receiver that read ``listing`` (identity -> version) and
        then applied every change pushed, above the version it held, once per webhook-id."""
        held = {name: (version, True) for name, version in listing.items()}
        for request in self.acknowledged():
            change = request.event["data"]
            name, version = change["identity"], change["version"]
            if version > held.get(name, (0, False))[0]:
                held[name] = (version, change["online"])
        return {name for name, (_, online) in held.items() if online}

    async def close(self) -> None:
        await self.down()
