"""The bare reference: an aiohttp app doing no work, on uvloop, on the same routes as the
service: what a user would run as a lean aiohttp service, and the yardstick of every ratio.

- ``POST /webhooks/sync`` parses the form (``await request.post()``) and answers 204.
- ``GET /v1/services/{sid}/identities/{identity}`` answers a JSON object of the same shape
  and about the same size as the service's reply, built from constants.

Run as ``python bench/reference.py --port N``; no access log (the service's access log is part
of the work being measured).
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


async def webhook(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(status=204)


async def identity(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "service_sid": request.match_info["service_sid"],
            "identity": request.match_info["identity"],
            "online": True,
            "pending_offline": False,
            "endpoints": ["3f2a9c1e-5b7d-4e21-9a0c-8d6f4b2e1a37"],
            "last_event_id": 123456,
            "changed_at": "2026-11-23T10:00:00.123Z",
            "version": 1,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/webhooks/sync", webhook)
    app.router.add_get("/v1/services/{service_sid}/identities/{identity:[^/]+}", identity)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
