"""The bare reference of the push row: what a user would write to POST webhooks, an aiohttp
client on uvloop that sends signed JSON bodies (HMAC-SHA256, as Standard Webhooks signs) of a
presence change's size, at a given rate for a given time, at most 16 in flight (the service's
default ``PRESENCE_PUSH_CONCURRENCY``). Prints ``{"posts": n, "cpu_s": s}``: its own CPU time
(what the row compares the service's CPU per delivery with).

Run as ``python bench/reference_push.py URL RATE SECONDS``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time

import aiohttp
import uvloop

KEY = b"0123456789abcdef0123456789abcdef"
IN_FLIGHT = 16


def body_of(k: int) -> bytes:
    change = {
        "service_sid": "IS" + "0" * 32,
        "identity": f"push-{k % 5000:05d}",
        "online": k % 2 == 0,
        "reason": "connected",
        "event_id": k,
        "version": k,
        "changed_at": "2026-11-23T10:00:00.123Z",
    }
    event = {"type": "reference", "timestamp": change["changed_at"], "data": change}
    return json.dumps(event, separators=(",", ":")).encode()


async def main(url: str, rate: float, seconds: float) -> None:
    started_cpu = time.process_time()
    slots = asyncio.Semaphore(IN_FLIGHT)
    posts = 0

    async def post(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal posts
        async with slots:
            body, stamp, msg = body_of(k), str(int(time.time())), f"msg_{k}"
            digest = hmac.new(KEY, f"{msg}.{stamp}.".encode() + body, hashlib.sha256).digest()
            headers = {
                "webhook-id": msg,
                "webhook-timestamp": stamp,
                "webhook-signature": "v1," + base64.b64encode(digest).decode(),
                "content-type": "application/json",
            }
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
            posts += 1

    async with aiohttp.ClientSession() as session:
        tasks = []
        start = time.perf_counter()
        for k in range(int(rate * seconds)):
            if (wait := start + k / rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(post(session, k)))
        await asyncio.gather(*tasks)
    print(json.dumps({"posts": posts, "cpu_s": time.process_time() - started_cpu}))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
