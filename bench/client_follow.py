"""One Python client of a change feed, for row "client" (``bench/client.py`` runs it against its
stand-in): ``speed`` takes the stream's changes and says how fast; ``memory`` reads the
listing and says what holding it costs. Prints one JSON line.

``python -m bench.client_follow URL SERVICE_SID speed|memory CHANGES``"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from presence_client import Change, PresenceView


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def speed(url: str, sid: str, count: int) -> dict[str, Any]:
    taken = asyncio.Event()
    seen = 0
    first = last = 0.0

    def hook(change: Change) -> None:
        nonlocal seen, first, last
        seen += 1
        if seen == 1:
            first = time.perf_counter()
        if seen == count:
            last = time.perf_counter()
            taken.set()

    cpu = time.process_time()
    async with PresenceView(url, sid, on_change=hook, transport="stream"):
        await asyncio.wait_for(taken.wait(), 600)
    return {"changes": seen, "seconds": last - first, "cpu_seconds": time.process_time() - cpu}


async def memory(url: str, sid: str) -> dict[str, Any]:
    gc.collect()
    before, heap = rss(), tracemalloc.get_traced_memory()[0]
    async with PresenceView(url, sid, transport="stream") as view:
        gc.collect()
        return {
            "held": len(view.online()),
            "rss_delta": rss() - before,
            "heap_delta": tracemalloc.get_traced_memory()[0] - heap,
        }


def main() -> None:
    url, sid, mode, count = sys.argv[1:5]
    if mode == "memory":
        tracemalloc.start()
        result = asyncio.run(memory(url, sid))
    else:
        result = asyncio.run(speed(url, sid, int(count)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
