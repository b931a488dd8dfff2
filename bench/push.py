"""Row "push": push subscriptions (docs/push.md) delivering to a receiver in this harness that
answers every request with a 204 after 1 ms.

1. One subscription, 1,000 changes a second: change-to-delivery latency (from the webhook's
   send to the receiver's receipt of its change), and the service's CPU per delivery, beside a
   bare aiohttp client on uvloop (``bench/reference_push.py``) that POSTs signed bodies of the
   same size at the same rate to the same receiver: its CPU per POST.
2. 100 services with one subscription each, 10 changes a second each: latency.
3. The receiver down (its port closed) for 5 minutes (1 with ``--quick``) while changes come
   at 10 a second, then back: the wait from its return to the first attempt that reaches it
   (the retry backoff, at most 60 s), and the time from its first 2xx to the subscription's
   lag being 0.

The webhook sender and the receiver run in this harness process, on the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from bench.support import (
    AUTH_TOKEN,
    PYTHON,
    ROOT,
    CpuMeter,
    log,
    pinned,
    redis_server,
    start_service,
)
from harness.processes import free_port
from presence.simulate.report import percentile
from presence.twilio.samples import SERVICE_SID, reachability
from presence.twilio.signing import form_headers

ADMIN_TOKEN = "bench-admin-token-0123456789"
RATE = 1000.0
SERVICES = 100
RATE_PER_SERVICE = 10.0
POPULATION = 5000
SENDERS = 32
RECEIVER_DELAY_S = 0.001
OUTAGE_RATE = 10.0


@dataclass
class Receiver:
    """An aiohttp server that answers 204 after 1 ms, and notes when each change came."""

    port: int = field(default_factory=free_port)
    received: dict[tuple[str, str, int], float] = field(default_factory=dict)
    requests: int = 0
    out_of_order: int = 0
    first_request: float | None = None
    """When the first request came after ``start`` (perf_counter)."""
    last_version: dict[tuple[str, str], int] = field(default_factory=dict)
    pending: set[tuple[str, str, int]] = field(default_factory=set)
    """Changes awaited (``all_in`` is set once none is left)."""
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    first_in: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def await_all(self, keys: set[tuple[str, str, int]]) -> None:
        self.pending = keys - self.received.keys()
        if not self.pending:
            self.all_in.set()

    async def _handle(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        body = await request.read()
        self.requests += 1
        if self.first_request is None:
            self.first_request = now
            self.first_in.set()
        event = json.loads(body)
        if event["type"] == "presence.changed":
            data = event["data"]
            key = (data["service_sid"], data["identity"])
            if data["version"] < self.last_version.get(key, 0):
                self.out_of_order += 1
            self.last_version[key] = max(data["version"], self.last_version.get(key, 0))
            change = (*key, data["version"])
            self.received.setdefault(change, now)
            self.pending.discard(change)
            if not self.pending:
                self.all_in.set()
        await asyncio.sleep(RECEIVER_DELAY_S)
        return web.Response(status=204)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/presence"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/presence", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.first_request = None
        self.first_in.clear()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def admin(base: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def subscribe(base: str, service_sid: str, url: str) -> str:
    created = admin(base, "POST", f"/v1/services/{service_sid}/subscriptions", {"url": url})
    return str(created["id"])


async def send_changes(
    base: str,
    services: list[str],
    rate: float,
    duration: float,
    rng: random.Random,
    prefix: str = "push",
) -> dict[tuple[str, str, int], float]:
    """Signed webhooks at ``rate`` a second for ``duration``, each flipping one identity
    (``<prefix>-<n>``) of one of ``services`` (a grace of 0: one change each); when each
    was sent, by change. A webhook not applied (it would make no change) is an error."""
    url = f"{base}/webhooks/sync"
    versions: dict[tuple[str, str], int] = {}
    sent: dict[tuple[str, str, int], float] = {}
    queue: asyncio.Queue[tuple[dict[str, str], tuple[str, str, int]] | None] = asyncio.Queue()

    async def sender(session: aiohttp.ClientSession) -> None:
        while (item := await queue.get()) is not None:
            params, key = item
            sent[key] = time.perf_counter()
            headers = form_headers(AUTH_TOKEN, url, params)
            async with session.post(url, data=urlencode(params), headers=headers) as reply:
                answer = await reply.read()
            if reply.status != 200 or b'"applied"' not in answer:
                raise RuntimeError(f"push: a webhook was answered {reply.status}: {answer!r}")

    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(sender(session)) for _ in range(SENDERS)]
        start = time.perf_counter()
        offset = rng.randrange(POPULATION)
        for k in range(int(rate * duration)):
            due = start + k / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            # Each identity in turn: its next change is sent long after the last was answered
            # (two in flight at once could arrive out of order, the older one stale).
            sid = services[k % len(services)]
            name = f"{prefix}-{(offset + k // len(services)) % POPULATION:05d}"
            version = versions.get((sid, name), 0) + 1
            versions[sid, name] = version
            online = version % 2 == 1
            params = reachability(name, "E1", version, online, connected=online, service_sid=sid)
            queue.put_nowait((params, (sid, name, version)))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    return sent


async def warm_up(base: str, services: list[str], receiver: Receiver) -> None:
    """One change per service, waited for: the subscriptions are being delivered (their
    leases taken, the connections open) before anything is measured."""
    sent = await send_changes(
        base, services, 100.0, len(services) / 100.0, random.Random(0), prefix="warm-up"
    )
    await all_received(receiver, sent, 30)
    if not sent.keys() <= receiver.received.keys():
        raise RuntimeError("push: the warm-up changes were not delivered within 30 s")


async def all_received(
    receiver: Receiver, sent: dict[tuple[str, str, int], float], within: float
) -> None:
    receiver.all_in.clear()
    receiver.await_all(set(sent))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver.all_in.wait(), within)


def latencies(receiver: Receiver, sent: dict[tuple[str, str, int], float]) -> dict[str, Any]:
    ordered = sorted(receiver.received[k] - t for k, t in sent.items() if k in receiver.received)
    # The senders wait for each webhook's answer: a service slower to answer than the rate
    # makes them send at less than it (said here, and held against the target).
    span = max(sent.values()) - min(sent.values()) if len(sent) > 1 else 0.0
    return {
        "changes": len(sent),
        "sent_per_s": round((len(sent) - 1) / span, 1) if span else None,
        "delivered": len(ordered),
        "missing": len(sent) - len(ordered),
        "out_of_order": receiver.out_of_order,
        "latency_ms": {
            "p50": round(1000 * percentile(ordered, 0.5), 1) if ordered else None,
            "p99": round(1000 * percentile(ordered, 0.99), 1) if ordered else None,
            "max": round(1000 * percentile(ordered, 1.0), 1) if ordered else None,
        },
    }


async def reference_cpu(receiver_url: str, duration: float) -> dict[str, Any]:
    """The bare client's CPU per POST, at RATE for ``duration``, on the server core."""
    command = pinned(
        "server",
        [PYTHON, str(ROOT / "bench" / "reference_push.py"), receiver_url, str(RATE), str(duration)],
    )
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), duration + 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    measured = json.loads(out)
    return {
        "posts": measured["posts"],
        "cpu_us_per_post": round(measured["cpu_s"] / max(1, measured["posts"]) * 1e6, 1),
    }


async def _one_subscription(base: str, pids: dict[str, int], duration: float) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    try:
        subscription = subscribe(base, SERVICE_SID, receiver.url)
        await warm_up(base, [SERVICE_SID], receiver)
        requests_before = receiver.requests
        meter = CpuMeter(**pids, harness=os.getpid())
        log(f"push: one subscription, {RATE:g} changes/s for {duration:g} s")
        sent = await send_changes(base, [SERVICE_SID], RATE, duration, random.Random(7))
        await all_received(receiver, sent, 30)
        cpu = meter.stop()
        result = latencies(receiver, sent)
        service_cpu_s = meter.seconds["service"]
        result |= {
            "rate": RATE,
            "duration_s": duration,
            "requests": receiver.requests - requests_before,
            "cpu_percent_of_one_core": cpu,
            "service_cpu_us_per_delivery": round(
                service_cpu_s / max(1, receiver.requests - requests_before) * 1e6, 1
            ),
        }
        admin(base, "DELETE", f"/v1/services/{SERVICE_SID}/subscriptions/{subscription}")
        log(f"push: the bare aiohttp client, {RATE:g} POSTs/s for {duration:g} s")
        result["reference"] = await reference_cpu(receiver.url, duration)
        return result
    finally:
        await receiver.stop()


async def _many_services(base: str, duration: float) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    try:
        rng = random.Random(8)
        services = ["IS" + rng.randbytes(16).hex() for _ in range(SERVICES)]
        for sid in services:
            subscribe(base, sid, receiver.url)
        log(f"push: {SERVICES} services, {RATE_PER_SERVICE:g} changes/s each for {duration:g} s")
        await warm_up(base, services, receiver)
        sent = await send_changes(base, services, SERVICES * RATE_PER_SERVICE, duration, rng)
        await all_received(receiver, sent, 30)
        return latencies(receiver, sent) | {
            "services": SERVICES,
            "rate_per_service": RATE_PER_SERVICE,
            "duration_s": duration,
        }
    finally:
        await receiver.stop()


async def _outage(base: str, down_s: float) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    sid = "IS" + "0" * 31 + "9"
    subscription = subscribe(base, sid, receiver.url)
    path = f"/v1/services/{sid}/subscriptions/{subscription}"
    try:
        await receiver.stop()
        log(f"push: receiver down for {down_s:g} s, {OUTAGE_RATE:g} changes/s")
        sent = await send_changes(base, [sid], OUTAGE_RATE, down_s, random.Random(9))
        lag_at_return = float(admin(base, "GET", path)["lag_seconds"])
        back = time.perf_counter()
        await receiver.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.first_in.wait(), 120)
        first = receiver.first_request
        caught_up = None
        while first is not None and time.perf_counter() - first < 120:
            if float(admin(base, "GET", path)["lag_seconds"]) == 0:
                caught_up = time.perf_counter()
                break
            await asyncio.sleep(0.05)
        await all_received(receiver, sent, 10)
        return latencies(receiver, sent) | {
            "down_s": down_s,
            "rate": OUTAGE_RATE,
            "lag_at_return_s": lag_at_return,
            "first_attempt_after_return_s": None if first is None else round(first - back, 2),
            "first_2xx_to_lag_0_s": (
                None if caught_up is None or first is None else round(caught_up - first, 2)
            ),
        }
    finally:
        await receiver.stop()


def run(workdir: Path, duration: float, down_s: float) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-push")
    service = start_service(
        workdir,
        redis.url,
        offline_grace_seconds="0",
        admin_token=ADMIN_TOKEN,
        push_allow_private="true",
    )
    try:
        pids = {"service": service.pid, "redis": redis.pid}
        return {
            "one_subscription": asyncio.run(_one_subscription(service.url, pids, duration)),
            "many_services": asyncio.run(_many_services(service.url, duration)),
            "outage": asyncio.run(_outage(service.url, down_s)),
        }
    finally:
        service.stop()
        redis.stop()
