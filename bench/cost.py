"""Row 6, cost as the work grows: Redis bytes per identity and the service's CPU per webhook at
10k, 100k and 1M identities (1M only without ``--quick``) with 1, 2 and 8 endpoints each.

For each size, one fresh redis-server (A) is filled through the store
(``RedisStore.apply_many``, several pipelines in flight): every identity connects its first
endpoint, then its second, then six more. After 1, 2 and 8 endpoints each, the change feed is
deleted and ``used_memory`` read (bytes per identity without the feed, as in row 3), the
pages' encodings counted, and the data saved (``SAVE``).

Each snapshot is then loaded into a redis-server of its own (B), so the webhooks that measure
one point never change the state the next point is filled from, and ``presence serve`` is
started on it. wrk drives it for a warm-up, then for a fixed window, with distinct signed
webhooks on the existing identities, drawn at random among the N: a disconnect of one of the
identity's endpoints (IsIdentityOnline=false when it was the last), and about a thousand
requests later a connect of a new endpoint in its place, so it keeps its E endpoints; EventIds
above the fill's. Server CPU per webhook is the service's utime + stime (/proc/<pid>/stat)
over the window divided by the webhooks answered, every one of them applied (checked through
``/metrics``); the Redis time per webhook is INFO commandstats' ``fcall`` usec (``evalsha``
before the library) over the same window divided by its calls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from redis import Redis

from bench import loads
from bench.fill import Step, apply_batches, endpoint_of, identity_name, make_store
from bench.http_rows import counted_wrk
from bench.memory import breakdown, drop_feeds, used_memory, warm_scripts
from bench.support import (
    AUTH_TOKEN,
    RequestFile,
    affinity,
    loadavg,
    log,
    redis_server,
    start_service,
    write_requests,
)
from harness.processes import RedisServer, ServerProcess
from presence.twilio.samples import reachability
from presence.twilio.signing import form_headers

SIZES = (10_000, 100_000, 1_000_000)
ENDPOINTS = (1, 2, 8)
PREFIX = "c"
WARMUP_S = 2.0
DURATION_S = 5.0
CONNECTIONS = 64
LAG = 500
"""Pairs between an endpoint's disconnect and the connect that replaces it: about a thousand
requests, a fraction of a second, well inside the grace period (a rebalancing's shape)."""
FIRST_EVENT_ID = 1000
"""Above every EventId of the fill (one per endpoint)."""
WARMUP_REQUESTS = 20_000


class Traffic:
    """The webhooks of one point, as one stream cut into the warm-up's file and the measured
    run's: which endpoints each identity has is followed from one request to the next, so
    every webhook is applied."""

    def __init__(self, n: int, endpoints: int) -> None:
        self.n = n
        self.endpoints = endpoints
        self.rng = random.Random(f"{n}x{endpoints}")
        self.event_id = FIRST_EVENT_ID
        # Only identities the traffic has touched: the others still have the fill's 0..E-1.
        self.current: dict[int, list[int]] = {}
        self.numbered: dict[int, int] = {}
        self.reconnects: collections.deque[tuple[int, int]] = collections.deque()
        self.busy: set[int] = set()

    def _params(self, i: int, k: int, *, connected: bool, online: bool) -> dict[str, str]:
        self.event_id += 1
        return reachability(
            identity_name(PREFIX, i),
            endpoint_of(PREFIX, i, k),
            self.event_id,
            online,
            connected=connected,
        )

    def webhooks(self, count: int) -> Iterator[dict[str, str]]:
        """The next ``count`` webhooks."""
        for _ in range(count):
            if len(self.reconnects) > LAG or (self.reconnects and len(self.busy) >= self.n):
                i, k = self.reconnects.popleft()
                self.current[i].append(k)
                self.busy.discard(i)
                yield self._params(i, k, connected=True, online=True)
                continue
            # An identity waiting for its reconnect is not drawn again: each disconnect and
            # the connect that replaces it stay a pair, and it never drops below E - 1.
            i = self.rng.randrange(self.n)
            while i in self.busy:
                i = self.rng.randrange(self.n)
            have = self.current.setdefault(i, list(range(self.endpoints)))
            gone = have.pop(self.rng.randrange(len(have)))
            k = self.numbered.get(i, self.endpoints)
            self.numbered[i] = k + 1
            self.reconnects.append((i, k))
            self.busy.add(i)
            yield self._params(i, gone, connected=False, online=bool(have))

    def skip(self, count: int) -> None:
        """Moves past ``count`` webhooks (those a run has sent already)."""
        for _ in self.webhooks(count):
            pass

    def file(self, path: Path, port: int, count: int) -> RequestFile:
        """The next ``count`` webhooks, signed for the service on ``port``."""
        url = f"http://127.0.0.1:{port}/webhooks/sync"
        return write_requests(
            path,
            (
                (
                    "POST",
                    "/webhooks/sync",
                    urlencode(params),
                    [f"{k}: {v}" for k, v in form_headers(AUTH_TOKEN, url, params).items()],
                )
                for params in self.webhooks(count)
            ),
        )


def _snapshot(redis: RedisServer, directory: Path) -> None:
    """Saves ``redis``'s data where a redis-server started in ``directory`` loads it."""
    with Redis(port=redis.port) as client:
        client.save()
    directory.mkdir(parents=True, exist_ok=True)
    shutil.move(redis.directory / "dump.rdb", directory / "dump.rdb")


def _loaded(redis: RedisServer, within: float = 300.0) -> None:
    deadline = time.monotonic() + within
    with Redis(port=redis.port) as client:
        while True:
            with contextlib.suppress(Exception):
                if client.info("persistence")["loading"] == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the snapshot did not load")
            time.sleep(0.1)


def drive(workdir: Path, snapshot: Path, n: int, endpoints: int) -> dict[str, Any]:
    """``presence serve`` on the snapshot, under wrk: the service's CPU per webhook."""
    redis = redis_server(snapshot)
    service: ServerProcess | None = None
    try:
        _loaded(redis)
        service = start_service(workdir, redis.url)
        warm = Traffic(n, endpoints).file(workdir / "cost-warm.tsv", service.port, WARMUP_REQUESTS)
        calibration = loads.wrk(service, warm, WARMUP_S, CONNECTIONS)
        # The measured run goes on from what the warm-up really sent (wrk stops mid-file), so
        # every identity still has its E endpoints (but for the last few requests in flight).
        traffic = Traffic(n, endpoints)
        traffic.skip(min(calibration["sent"], WARMUP_REQUESTS))
        # Enough distinct webhooks that the measured run never comes back to the first.
        count = int(calibration["rps"] * DURATION_S * 1.5) + 5000
        main = traffic.file(workdir / "cost-main.tsv", service.port, count)
        run = counted_wrk(service, main, DURATION_S, CONNECTIONS, redis)
        counted = run["outcomes"]
        # apply_event: a function since the library (fcall), a script before (evalsha).
        commands = run.get("redis_commands") or {}
        lua = commands.get("fcall") or commands.get("evalsha") or {}
        requests = run["requests"]
        if run["wrapped"] or counted["applied"] < requests or run["errors"]:
            raise RuntimeError(f"cost {n}x{endpoints}: not every webhook applied: {counted}")
        return {
            "rps": run["rps"],
            "requests": requests,
            "p50_ms": run["p50_ms"],
            "p99_ms": run["p99_ms"],
            "outcomes": counted,
            "cpu_percent_of_one_core": run["cpu_percent_of_one_core"],
            "waited_for_cpu_percent": run["waited_for_cpu_percent"],
            "server_cpu_us_per_webhook": run["server_cpu_us_per_request"],
            "redis_cpu_us_per_webhook": round(run["cpu_seconds"]["redis"] / requests * 1e6, 1),
            "redis_evalsha_us_per_webhook": lua.get("usec_per_call"),
        }
    finally:
        if service is not None:
            service.stop()
        redis.stop()
        shutil.rmtree(snapshot, ignore_errors=True)


def measure_size(
    workdir: Path, n: int, fill_cores: set[int], other_cores: set[int]
) -> dict[str, Any]:
    """Every point of one size, from one fill of A."""
    filled = redis_server(workdir / f"redis-cost-{n}")
    points: dict[str, Any] = {}
    try:
        asyncio.run(warm_scripts(filled.url))
        baseline = used_memory(filled.port)
        have = 0
        for endpoints in ENDPOINTS:
            log(f"cost: {n:,} identities, endpoints {have + 1}..{endpoints} each")
            steps = [
                Step(connected=True, event_id=k + 1, endpoint=k) for k in range(have, endpoints)
            ]
            with affinity(fill_cores):
                rate = asyncio.run(_fill(filled.url, n, steps))
            have = endpoints
            changes, feed_bytes = drop_feeds(filled.port)
            used = used_memory(filled.port)
            layout = breakdown(filled.port)
            snapshot = workdir / f"redis-cost-{n}x{endpoints}"
            _snapshot(filled, snapshot)
            log(f"cost: {n:,}x{endpoints}: {(used - baseline) / n:.1f} B per identity; wrk")
            load = loadavg()
            with affinity(other_cores):
                http = drive(workdir, snapshot, n, endpoints)
            points[f"{n}x{endpoints}"] = {
                "identities": n,
                "endpoints": endpoints,
                "bytes_per_identity": round((used - baseline) / n, 1),
                "feed_changes_dropped": changes,
                "feed_bytes_dropped": feed_bytes,
                "fill_rate_per_s": round(rate),
                "page_encodings": layout["page_encodings"],
                "fields_per_page": layout["fields_per_page"],
                "value_bytes": layout["value_bytes"],
                "loadavg": load,
                **http,
            }
            log(
                f"cost: {n:,}x{endpoints}: {http['server_cpu_us_per_webhook']} us of service "
                f"CPU per webhook, Redis {http['redis_evalsha_us_per_webhook']} us"
            )
    finally:
        filled.stop()
    return points


def run(
    workdir: Path, sizes: Sequence[int], fill_cores: set[int], other_cores: set[int]
) -> dict[str, Any]:
    points: dict[str, Any] = {}
    for n in sizes:
        points.update(measure_size(workdir, n, fill_cores, other_cores))
    return {
        "sizes": list(sizes),
        "endpoints": list(ENDPOINTS),
        "warmup_s": WARMUP_S,
        "duration_s": DURATION_S,
        "connections": CONNECTIONS,
        "points": points,
    }


async def _fill(url: str, n: int, steps: Sequence[Step]) -> float:
    store = make_store(url)
    try:
        return await apply_batches(store, PREFIX, 0, n, *steps, batch=max(1, 1000 // len(steps)))
    finally:
        await store.close()
