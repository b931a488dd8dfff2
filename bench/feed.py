"""Row "feed": the change feed fanned out by one process: 1,000 Server-Sent Event clients of one
service, 990 of them following 10 identities each and 10 following every change, while
signed webhooks make 500 changes a second.

Measured: webhook-to-client latency (from a webhook's send to its change reaching a client,
per delivery), the service's memory per idle stream (RSS with the streams open, before any
change, against before they opened), and the service's CPU per change delivered to a client.
The clients and the webhook sender run in this harness process, on the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp

from bench.support import (
    API_TOKEN,
    AUTH_TOKEN,
    CpuMeter,
    log,
    metric_sum,
    metrics_text,
    redis_server,
    start_service,
)
from presence.simulate.report import percentile
from presence.twilio.samples import SERVICE_SID, reachability
from presence.twilio.signing import form_headers

CLIENTS = 1000
FOLLOWING_ALL = 10
IDENTITIES_EACH = 10
POPULATION = 5000
RATE = 500.0
SENDERS = 32


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


_CHANGE = re.compile(
    rb'data: \{"service_sid":"IS[0-9a-f]{32}","identity":"([^"]*)".*?"version":(\d+),'
)


class _Stream(asyncio.Protocol):
    """One SSE client on a raw connection: stamps each change as its bytes come in (a full
    HTTP client would make this harness, not the service, the bottleneck)."""

    def __init__(self, clients: Clients, request: bytes) -> None:
        self.clients = clients
        self.request = request
        self.tail = b""
        self.open = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport (bench/listeners.py runs on
        # uvloop) writes like asyncio's but is no subclass of asyncio.Transport.
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.open.done():
            self.open.set_result(data.startswith(b"HTTP/1.1 200"))
        chunk = self.tail + data
        cut = chunk.rfind(b"\n")
        self.tail = chunk[cut + 1 :]
        clients = self.clients
        for match in _CHANGE.finditer(chunk, 0, cut + 1):
            clients.received += 1
            key = (match[1].decode(), int(match[2]))
            sent = clients.sent.get(key)
            if sent is not None:
                clients.latencies.append(now - sent)
                clients.per_change[key] = clients.per_change.get(key, 0) + 1
        if clients.received >= clients.expected:
            clients.all_in.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_result(False)


class Clients:
    """The SSE clients, and what they received."""

    def __init__(self, port: int, filters: list[list[str] | None]) -> None:
        self.port = port
        self.filters = filters
        self.sent: dict[tuple[str, int], float] = {}
        """When each change's webhook went out, by (identity, version)."""
        self.answered: dict[tuple[str, int], tuple[float, int]] = {}
        """Each webhook's answer: seconds after it went out, and its status."""
        self.per_change: dict[tuple[str, int], int] = {}
        """Deliveries received of each change."""
        self.wanted: dict[tuple[str, int], int] = {}
        """Deliveries expected of each change."""
        self.latencies: list[float] = []
        self.received = 0
        self.expected = 1 << 62
        """Once this many changes are received, ``all_in`` is set."""
        self.all_in = asyncio.Event()
        self.errors = 0
        self.transports: list[asyncio.BaseTransport] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for names in self.filters:
            query = urlencode([("identity", name) for name in names or ()])
            request = (
                f"GET /v1/services/{SERVICE_SID}/changes?{query} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n"
                f"Authorization: Bearer {API_TOKEN}\r\n\r\n"
            ).encode()
            transport, stream = await loop.create_connection(
                functools.partial(_Stream, self, request), "127.0.0.1", self.port
            )
            self.transports.append(transport)
            if not await stream.open:
                self.errors += 1

    def stop(self) -> None:
        for transport in self.transports:
            transport.close()


async def _send(
    base: str, clients: Clients, duration: float, rng: random.Random
) -> tuple[int, int]:
    """Webhooks at RATE a second for ``duration``, each flipping one identity (a grace of 0:
    one change each); returns (sent, expected deliveries)."""
    url = f"{base}/webhooks/sync"
    versions: dict[str, int] = {}
    recipients: dict[str, int] = {}
    for names in clients.filters:
        for name in names or ():
            recipients[name] = recipients.get(name, 0) + 1
    queue: asyncio.Queue[tuple[dict[str, str], tuple[str, int]] | None] = asyncio.Queue()

    async def sender(session: aiohttp.ClientSession) -> None:
        while (item := await queue.get()) is not None:
            params, key = item
            clients.sent[key] = sent = time.perf_counter()
            async with session.post(
                url, data=urlencode(params), headers=form_headers(AUTH_TOKEN, url, params)
            ) as response:
                await response.read()
            clients.answered[key] = (time.perf_counter() - sent, response.status)

    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(sender(session)) for _ in range(SENDERS)]
        start = time.perf_counter()
        count = int(RATE * duration)
        for k in range(count):
            due = start + k / RATE
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            name = f"feed-{rng.randrange(POPULATION):05d}"
            version = versions.get(name, 0) + 1
            versions[name] = version
            online = version % 2 == 1
            params = reachability(name, "E1", version, online, connected=online)
            clients.wanted[(name, version)] = FOLLOWING_ALL + recipients.get(name, 0)
            queue.put_nowait((params, (name, version)))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    return count, sum(clients.wanted.values())


async def _measure(base: str, port: int, pids: dict[str, int], duration: float) -> dict[str, Any]:
    rng = random.Random(6)
    population = [f"feed-{i:05d}" for i in range(POPULATION)]
    filters: list[list[str] | None] = [None] * FOLLOWING_ALL
    filters += [rng.sample(population, IDENTITIES_EACH) for _ in range(CLIENTS - FOLLOWING_ALL)]
    clients = Clients(port, filters)
    before = rss_bytes(pids["service"])
    await clients.start()
    opened = metric_sum(metrics_text(base), "presence_feed_streams_open")
    await asyncio.sleep(2.0)  # let the service settle before reading its memory
    idle = rss_bytes(pids["service"])
    meter = CpuMeter(**pids, harness=os.getpid())
    log(f"feed: {int(opened)} streams open; {RATE:g} changes/s for {duration:g} s")
    started = time.perf_counter()
    sent, expected = await _send(base, clients, duration, rng)
    clients.expected = expected
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(clients.all_in.wait(), 10)
    elapsed = time.perf_counter() - started
    cpu = meter.stop()
    clients.stop()
    ordered = sorted(clients.latencies)
    answers = sorted(seconds for seconds, _ in clients.answered.values())
    short = _short(clients)
    service_cpu_s = cpu["service"] / 100 * elapsed
    return {
        "clients": CLIENTS,
        "streams_opened": opened,
        "following_all": FOLLOWING_ALL,
        "identities_per_filtered_client": IDENTITIES_EACH,
        "population": POPULATION,
        "rate": RATE,
        "duration_s": duration,
        "changes": sent,
        "deliveries_expected": expected,
        "deliveries_received": clients.received,
        "client_errors": clients.errors,
        # Which changes came short, and their webhooks' answers: a slow or failed webhook
        # tells a stalled ingest from a stream that lost a change.
        "changes_short": len(short),
        "short_changes": short[:20],
        "webhook_answer_ms": {
            "p99": round(1000 * percentile(answers, 0.99), 2),
            "max": round(1000 * percentile(answers, 1.0), 2),
        },
        "latency_ms": {
            "p50": round(1000 * percentile(ordered, 0.5), 2),
            "p99": round(1000 * percentile(ordered, 0.99), 2),
            "max": round(1000 * percentile(ordered, 1.0), 2),
        },
        "rss_before_streams_bytes": before,
        "rss_idle_streams_bytes": idle,
        "bytes_per_idle_stream": round((idle - before) / CLIENTS),
        "cpu_percent_of_one_core": cpu,
        "service_cpu_us_per_delivery": round(service_cpu_s / max(1, clients.received) * 1e6, 1),
        "service_cpu_us_per_change": round(service_cpu_s / max(1, sent) * 1e6, 1),
    }


def _short(clients: Clients) -> list[dict[str, Any]]:
    """The changes some client did not receive, with their webhooks' answers."""
    short = []
    for key, wanted in clients.wanted.items():
        got = clients.per_change.get(key, 0)
        if got < wanted:
            answer = clients.answered.get(key)
            short.append({
                "identity": key[0], "version": key[1], "received": got, "wanted": wanted,
                "webhook_ms": None if answer is None else round(1000 * answer[0], 1),
                "status": None if answer is None else answer[1],
            })  # fmt: skip
    return short


def run(workdir: Path, duration: float) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-feed")
    service = start_service(
        workdir, redis.url, offline_grace_seconds="0", max_streams=str(2 * CLIENTS)
    )
    try:
        pids = {"service": service.pid, "redis": redis.pid}
        return asyncio.run(_measure(service.url, service.port, pids, duration))
    finally:
        service.stop()
        redis.stop()
