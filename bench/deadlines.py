"""Row 5: 100k offline deadlines falling due in the same millisecond, fired by the sweeper of
a real ``presence serve`` process.

100k identities are put online through the store's script, then disconnected
(IsIdentityOnline=false) by a store whose clock is frozen at T and whose grace is D - T, so
every deadline is exactly D, a whole second a few seconds after the fill ends. A subscriber
on ``presence:changes`` (a raw socket in a thread, counting the messages' bytes, so it keeps
up) stamps when the first and the last offline change arrive. Reported: the time from D to
the last of them."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.fill import apply_batches, endpoints_for, make_store
from bench.loads import commandstats, commandstats_delta
from bench.support import (
    CpuMeter,
    affinity,
    http_json,
    metric_sum,
    metrics_text,
    redis_server,
    start_service,
)
from presence.keys import Keyspace
from presence.twilio.samples import SERVICE_SID

PATTERN = b'"online":false,"reason":"disconnected"'


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Subscriber(threading.Thread):
    def __init__(self, port: int, channel: str, expected: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"SUBSCRIBE {channel}\r\n".encode())
        self.expected = expected
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.marks: dict[int, float] = {}
        self.finished = threading.Event()
        self.stop_at = math.inf

    def run(self) -> None:
        tail = b""
        step = self.expected // 10
        self.sock.settimeout(0.2)
        try:
            while self.count < self.expected and time.time() < self.stop_at:
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    break
                now = time.time()
                found = (tail + data).count(PATTERN)
                tail = data[-(len(PATTERN) - 1) :]
                if found:
                    if self.first is None:
                        self.first = now
                    before = self.count
                    self.count += found
                    self.last = now
                    for mark in range((before // step + 1) * step, self.count + 1, step):
                        self.marks.setdefault(mark, now)
        finally:
            self.sock.close()
            self.finished.set()


async def _fill(
    url: str, n: int, *, connected: bool, clock_ms: int | None = None, grace_ms: int = 10_000
) -> float:
    store = make_store(
        url, grace_ms=grace_ms, clock=(lambda: clock_ms) if clock_ms is not None else None
    )
    endpoints = endpoints_for("dl", n)
    try:
        apply = apply_batches
        return await apply(
            store, "dl", 0, n, endpoints, connected=connected, event_id=1 if connected else 2
        )
    finally:
        await store.close()


def run(
    workdir: Path, n: int = 100_000, profile: Any = None, fill_cores: set[int] | None = None
) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-deadlines")
    service = start_service(workdir, redis.url)
    keys = Keyspace("presence")
    try:
        log(f"deadlines: {n} identities online")
        t0 = time.perf_counter()
        with affinity(fill_cores) if fill_cores else contextlib.nullcontext():
            rate_on = asyncio.run(_fill(redis.url, n, connected=True))
        phase = time.perf_counter() - t0
        with Redis(port=redis.port) as client:
            seconds, micros = client.time()
        frozen = seconds * 1000 + micros // 1000
        deadline_ms = math.ceil((frozen + phase * 1250 + 3000) / 1000) * 1000
        subscriber = Subscriber(redis.port, keys.changes_channel, n)
        subscriber.start()
        log(
            f"deadlines: {n} disconnects, every deadline at {deadline_ms} "
            f"({(deadline_ms - frozen) / 1000:.1f}s after the freeze)"
        )
        with affinity(fill_cores) if fill_cores else contextlib.nullcontext():
            rate_off = asyncio.run(
                _fill(redis.url, n, connected=False, clock_ms=frozen, grace_ms=deadline_ms - frozen)
            )
        with Redis(port=redis.port) as client:
            now_ms = int(time.time() * 1000)
            at_deadline = http_json(f"{service.url}/v1/services/{SERVICE_SID}/stats")[
                "pending_offline"
            ]
        if now_ms >= deadline_ms or at_deadline != n or subscriber.count:
            raise RuntimeError(
                f"setup failed: fill ended {now_ms - deadline_ms} ms after the deadline, "
                f"{at_deadline} of {n} due at it, {subscriber.count} fired early"
            )
        before = metrics_text(service.url)
        commands_before = commandstats(redis)
        time.sleep(max(0.0, deadline_ms / 1000 - time.time() - 0.3))
        meter = CpuMeter(service=service.pid, redis=redis.pid)
        subscriber.stop_at = deadline_ms / 1000 + 120

        def wait() -> dict[str, Any]:
            subscriber.finished.wait()
            return {}

        prof = profile.during(service, wait, 15) if profile is not None else wait()
        cpu = meter.stop()
        after = metrics_text(service.url)
        stats = http_json(f"{service.url}/v1/services/{SERVICE_SID}/stats")
        d = deadline_ms / 1000
        result: dict[str, Any] = {
            "identities": n,
            "deadline_ms": deadline_ms,
            "published": subscriber.count,
            "first_after_deadline_s": round(subscriber.first - d, 3) if subscriber.first else None,
            "all_after_deadline_s": round(subscriber.last - d, 3)
            if subscriber.last and subscriber.count >= n
            else None,
            "per_10_percent_after_deadline_s": {
                k: round(v - d, 3) for k, v in sorted(subscriber.marks.items())
            },
            "publish_rate_per_s": round(n / (subscriber.last - subscriber.first), 0)
            if subscriber.first and subscriber.last and subscriber.last > subscriber.first
            else None,
            "sweeper_passes": metric_sum(after, "presence_sweeper_passes_total")
            - metric_sum(before, "presence_sweeper_passes_total"),
            "changes_published_metric": metric_sum(
                after, "presence_changes_published_total", reason="disconnected"
            )
            - metric_sum(before, "presence_changes_published_total", reason="disconnected"),
            "stats_after": stats,
            "cpu_percent_of_one_core_during_sweep": cpu,
            "fill_rate_per_s": {"connect": round(rate_on), "disconnect": round(rate_off)},
            "service_log_bytes": service.log.stat().st_size,
        }
        if profile is not None:
            result["profile"] = prof
        result["redis_commands_during_sweep"] = commandstats_delta(
            commands_before, commandstats(redis)
        )
        return result
    finally:
        service.stop()
        redis.stop()
