"""A Python HTTP/1.1 load generator, run in a process of its own.

``python -m bench.pacer FILE --port P --duration S --connections C [--rate R]``

With ``--rate``, open loop: request k is due at start + k/R whatever the replies, and its
latency is counted from when it was due (so a stalled server is not hidden by the generator
waiting for it: no coordinated omission); the time from sending to the reply is reported as
``service_*``. Without ``--rate``, closed loop: each connection sends its next request as soon
as the previous reply is in (what wrk does; the fallback when wrk is missing). Requests are
taken in turn from FILE (the format of bench/cycle.lua), keep-alive connections, minimal
parsing (status line and Content-Length). Prints one line ``PACERJSON {...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


def load(path: Path, port: int) -> list[bytes]:
    requests = []
    for line in path.read_text().splitlines():
        method, target, body, *headers = line.split("\t")
        raw = body.encode()
        head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
        if raw or method == "POST":
            head.append(f"Content-Length: {len(raw)}")
        requests.append(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
    return requests


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(args: argparse.Namespace) -> dict[str, object]:
    requests = load(Path(args.file), args.port)
    rate = args.rate
    total = int(rate * args.duration) if rate else (args.count or None)
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    counter = 0
    start = time.perf_counter() + (0.2 if rate else 0.0)
    stop_at = start + args.duration

    async def connection() -> None:
        nonlocal counter, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            while True:
                k = counter
                counter += 1
                if total is not None and k >= total:
                    return
                if rate:
                    due = start + k / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    due = time.perf_counter()
                    if due >= stop_at:
                        return
                sent = time.perf_counter()
                writer.write(requests[k % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                now = time.perf_counter()
                statuses[status] = statuses.get(status, 0) + 1
                if now >= start:
                    latencies.append(now - due)
                    service.append(now - sent)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(args.connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    service.sort()
    ms = 1000
    return {
        "mode": "open" if rate else "closed",
        "target_rate": rate,
        "requests": len(latencies),
        "achieved_rate": round(len(latencies) / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "statuses": statuses,
        "errors": errors,
        "distinct": len(requests),
        "p50_ms": round(percentile(latencies, 50) * ms, 2),
        "p90_ms": round(percentile(latencies, 90) * ms, 2),
        "p99_ms": round(percentile(latencies, 99) * ms, 2),
        "p999_ms": round(percentile(latencies, 99.9) * ms, 2),
        "max_ms": round(latencies[-1] * ms, 2) if latencies else None,
        "service_p50_ms": round(percentile(service, 50) * ms, 2),
        "service_p99_ms": round(percentile(service, 99) * ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=0, help="closed loop: stop after this many")
    args = parser.parse_args()
    print("PACERJSON " + json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
