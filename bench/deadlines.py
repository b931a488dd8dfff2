"""Row 4: 100k offline deadlines falling due in the same millisecond, fired by the sweeper of
a real ``presence serve`` process.

100k identities are put online through the store's script, then disconnected
(IsIdentityOnline=false) by a store whose clock is frozen at T (the Redis server's time) and
whose grace is D - T, so every deadline is exactly D, a whole second a few seconds after the
fill ends. Before D the setup is checked: every identity pending offline (the counters), every
page holding them due exactly at D in the due pages, nothing fired. A subscriber on
``presence:changes`` (a raw socket in a thread, counting the messages' bytes, so it keeps up)
stamps when the first and the last offline change arrive (the subscriber's clock and Redis'
are the same machine's). Reported: the time from D to the first and to the last of them, and
the sweeper's Redis time per deadline: INFO commandstats' ``fcall`` usec over the row
(fire_due.lua with the commands it calls) divided by the deadlines fired."""

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

from bench.fill import GRACE_MS, Step, apply_batches, make_store
from bench.loads import commandstats, commandstats_delta
from bench.support import (
    CpuMeter,
    affinity,
    http_json,
    loadavg,
    log,
    metric_sum,
    metrics_text,
    redis_server,
    start_service,
)
from presence.keys import BUCKETS, PAGES, Keyspace
from presence.twilio.samples import SERVICE_SID

PATTERN = b'"online":false,"reason":"disconnected"'
PREFIX = "d"


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
    url: str, n: int, step: Step, *, clock_ms: int | None = None, grace_ms: int = GRACE_MS
) -> float:
    store = make_store(
        url, grace_ms=grace_ms, clock=(lambda: clock_ms) if clock_ms is not None else None
    )
    try:
        return await apply_batches(store, PREFIX, 0, n, step)
    finally:
        await store.close()


def redis_ms(port: int) -> int:
    """Now by the Redis server's clock: the clock the sweeper and the scripts go by."""
    with Redis(port=port) as client:
        seconds, micros = client.time()
    now: int = seconds * 1000 + micros // 1000
    return now


def pages_of_service(port: int) -> int:
    """How many pages hold identities of the service."""
    keys = Keyspace("presence")
    with Redis(port=port) as client:
        p = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            for g in range(PAGES):
                p.exists(keys.page(b, SERVICE_SID, g))
        found: list[int] = p.execute()
    return sum(found)


def scheduled(port: int, deadline_ms: int) -> dict[str, int]:
    """How the service's pages are scheduled in the due pages: due exactly at the deadline,
    before it, after it."""
    keys = Keyspace("presence")
    with Redis(port=port) as client:
        p = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            p.zcount(keys.due_pages(b), deadline_ms, deadline_ms)
            p.zcount(keys.due_pages(b), "-inf", f"({deadline_ms}")
            p.zcount(keys.due_pages(b), f"({deadline_ms}", "+inf")
        counts = p.execute()
    return {
        "at_deadline": sum(counts[0::3]),
        "before": sum(counts[1::3]),
        "after": sum(counts[2::3]),
    }


def run(
    workdir: Path, n: int = 100_000, profile: Any = None, fill_cores: set[int] | None = None
) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-deadlines")
    service = start_service(workdir, redis.url)
    keys = Keyspace("presence")
    load_start = loadavg()
    try:
        log(f"deadlines: {n} identities online")
        t0 = time.perf_counter()
        with affinity(fill_cores) if fill_cores else contextlib.nullcontext():
            rate_on = asyncio.run(_fill(redis.url, n, Step(connected=True, event_id=1)))
        phase = time.perf_counter() - t0
        # D is set by the Redis server's clock, the one the sweeper goes by; the disconnects
        # take about as long as the connects did: D leaves them that and 3 s more.
        frozen = redis_ms(redis.port)
        deadline_ms = math.ceil((frozen + phase * 1250 + 3000) / 1000) * 1000
        subscriber = Subscriber(redis.port, keys.changes_channel, n)
        subscriber.start()
        log(
            f"deadlines: {n} disconnects, every deadline at {deadline_ms} "
            f"({(deadline_ms - frozen) / 1000:.1f}s after the freeze)"
        )
        with affinity(fill_cores) if fill_cores else contextlib.nullcontext():
            rate_off = asyncio.run(
                _fill(
                    redis.url,
                    n,
                    Step(connected=False, event_id=2),
                    clock_ms=frozen,
                    grace_ms=deadline_ms - frozen,
                )
            )
        # The setup holds if, before D: every identity is pending offline (the counters), every
        # page holding them is due exactly at D and none before or after (the due pages), and
        # nothing has fired yet.
        pending = http_json(f"{service.url}/v1/services/{SERVICE_SID}/stats")["pending_offline"]
        schedule = scheduled(redis.port, deadline_ms)
        pages = pages_of_service(redis.port)
        now_ms = redis_ms(redis.port)
        if (
            now_ms >= deadline_ms
            or pending != n
            or schedule != {"at_deadline": pages, "before": 0, "after": 0}
            or subscriber.count
        ):
            raise RuntimeError(
                f"setup failed: fill ended {now_ms - deadline_ms} ms after the deadline, "
                f"{pending} of {n} pending offline, pages due {schedule} of {pages}, "
                f"{subscriber.count} fired early"
            )
        log(f"deadlines: {pending:,} pending offline, {pages:,} pages due at D; waiting for D")
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

        # The service counts a change after its script has published it: the last ones are
        # counted a moment after the subscriber saw them.
        def counted(text: str) -> float:
            return metric_sum(text, "presence_changes_published_total", reason="disconnected")

        wait_until = time.monotonic() + 5
        after = metrics_text(service.url)
        while counted(after) - counted(before) < subscriber.count and time.monotonic() < wait_until:
            time.sleep(0.1)
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
            "changes_published_metric": counted(after) - counted(before),
            "stats_after": stats,
            "cpu_percent_of_one_core_during_sweep": cpu,
            "waited_for_cpu_percent_during_sweep": {
                name: round(100 * waited / meter.elapsed, 1)
                for name, waited in meter.waited.items()
            },
            "fill_rate_per_s": {"connect": round(rate_on), "disconnect": round(rate_off)},
            "service_log_bytes": service.log.stat().st_size,
        }
        if profile is not None:
            result["profile"] = prof
        commands = commandstats_delta(commands_before, commandstats(redis))
        result["redis_commands_during_sweep"] = commands
        # The sweeper's Lua (fire_due, and the Redis commands it calls) per deadline fired: a
        # function since the library (fcall), a script before (evalsha).
        lua = sum(commands.get(name, {}).get("usec", 0) for name in ("fcall", "evalsha"))
        result["redis_us_per_deadline"] = round(lua / max(1, subscriber.count), 2)
        result["pages_due"] = pages
        result["loadavg"] = {"at_start": load_start, "at_end": loadavg()}
        return result
    finally:
        service.stop()
        redis.stop()
