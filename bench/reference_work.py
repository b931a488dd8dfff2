"""The minimal real-work reference: a webhook receiver doing only what cannot be skipped, on
uvloop. It checks the Twilio signature (HMAC-SHA1 over the URL and the sorted parameters),
runs one Lua script per webhook in Redis (storing the event under its identity), the scripts
of webhooks arriving together sent as one pipelined round trip, and answers 200 once its own
script has run. No validation beyond the signature, no metrics, no log: how close to the bare
app a receiver that really stores each webhook can get.

Run as ``python bench/reference_work.py --port N --redis-url URL --token TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

import uvloop
from aiohttp import web
from redis.asyncio import Redis

SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'applied'
"""


class Receiver:
    def __init__(self, redis: Redis, token: str) -> None:
        self.redis = redis
        self.key = token.encode()
        self.sha = ""
        self.pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.sending = False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = parse_qsl(body.decode(), keep_blank_values=True)
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        signed = url + "".join(name + value for name, value in sorted(params))
        mac = hmac.new(self.key, signed.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(
            base64.b64encode(mac), request.headers.get("X-Twilio-Signature", "").encode()
        ):
            return web.Response(status=403)
        fields = dict(params)
        reply = await self.call(
            [f"ref:{fields.get('ServiceSid')}:{fields.get('Identity')}"],
            [fields.get("EndpointId", ""), fields.get("EventId", "")],
        )
        return web.Response(text=f'{{"status": "{reply}"}}', content_type="application/json")

    async def call(self, keys: list[str], args: list[str]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((["EVALSHA", self.sha, len(keys), *keys, *args], future))
        if not self.sending:
            self.sending = True
            asyncio.get_running_loop().create_task(self.send())
        return await future

    async def send(self) -> None:
        await asyncio.sleep(0)
        while self.pending:
            batch, self.pending = self.pending, []
            async with self.redis.pipeline(transaction=False) as pipe:
                for command, _ in batch:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
            for (_, future), reply in zip(batch, replies, strict=True):
                future.set_result(reply)
        self.sending = False


async def start(args: argparse.Namespace) -> web.AppRunner:
    redis = Redis.from_url(args.redis_url, decode_responses=True)
    receiver = Receiver(redis, args.token)
    receiver.sha = await redis.script_load(SCRIPT)
    app = web.Application()
    app.router.add_post("/webhooks/sync", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()

    async def serve() -> None:
        await start(args)
        await asyncio.Event().wait()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
