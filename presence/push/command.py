"""``presence subscriptions``: manages a running service's push subscriptions over its API,
with the admin token from ``PRESENCE_ADMIN_TOKEN``. Each action is one request; the reply's
JSON is printed, and the exit status is 0 on a 2xx, else 1."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

ADMIN_TOKEN_VARIABLE = "PRESENCE_ADMIN_TOKEN"
API_TOKEN_VARIABLE = "PRESENCE_API_TOKEN"
TIMEOUT_SECONDS = 30.0
"""Long enough for ``test``, whose reply waits for one push attempt (at most 30 s)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Under the service's subscriptions route."""
    body: dict[str, Any] | None = None
    reads: bool = False
    """Readable with the API token alone."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", required=True, help="the running service's base URL (http://host:port)"
    )
    parser.add_argument("--service", required=True, help="the ServiceSid (IS...)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="subscribe TARGET_URL; prints the secret, once")
    add.add_argument("target_url", metavar="TARGET_URL")
    add.add_argument("--description", help="a note of yours (at most 200 characters)")
    add.add_argument(
        "--since", help="a feed_cursor (of /online): start after it, missing nothing since"
    )
    actions.add_parser("list", help="every subscription of the service")
    rotate = None
    for name, text in (
        ("show", "one subscription and its status"),
        ("remove", "delete a subscription"),
        ("rotate-secret", "a new secret; the old one signs too for a while"),
        ("enable", "deliver again, from the subscription's cursor"),
        ("disable", "stop delivering (the cursor stays)"),
        ("test", "send one presence.ping now and print its outcome"),
        ("attempts", "the last 50 attempts, newest first"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", metavar="ID")
        if name == "rotate-secret":
            rotate = action
    assert rotate is not None
    rotate.add_argument(
        "--previous-expires-in",
        type=int,
        help="seconds the old secret keeps signing (0 to 86400, default 86400; 0 revokes it)",
    )


def request_of(args: dict[str, Any]) -> Request:
    """The API request an action stands for."""
    action = args["action"]
    if action == "add":
        body = {"url": args["target_url"]}
        for name in ("description", "since"):
            if args.get(name) is not None:
                body[name] = args[name]
        return Request("POST", "", body)
    if action == "list":
        return Request("GET", "", reads=True)
    one = "/" + quote(args["id"], safe="")
    if action == "show":
        return Request("GET", one, reads=True)
    if action == "attempts":
        return Request("GET", one + "/attempts", reads=True)
    if action == "remove":
        return Request("DELETE", one)
    if action == "rotate-secret":
        expires = args.get("previous_expires_in")
        return Request(
            "POST",
            one + "/rotate-secret",
            {} if expires is None else {"previous_expires_in": expires},
        )
    return Request("POST", f"{one}/{action}")  # enable, disable, test


def token_for(request: Request, environ: dict[str, str]) -> str | None:
    """The admin token; for reading, the API token will do when the admin one is not set."""
    admin = environ.get(ADMIN_TOKEN_VARIABLE) or None
    if admin is None and request.reads:
        return environ.get(API_TOKEN_VARIABLE) or None
    return admin


async def send(
    base_url: str, service_sid: str, request: Request, token: str | None, out: TextIO
) -> int:
    """Sends the request and prints the reply's JSON; the exit status."""
    url = f"{base_url.rstrip('/')}/v1/services/{quote(service_sid, safe='')}/subscriptions"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(
            request.method, url + request.path, json=request.body, headers=headers
        ) as response,
    ):
        text = await response.text()
        if text:
            try:
                print(json.dumps(json.loads(text), indent=2), file=out)
            except ValueError:
                print(text, file=out)
        return 0 if 200 <= response.status < 300 else 1


def run(args: dict[str, Any]) -> int:
    request = request_of(args)
    token = token_for(request, dict(os.environ))
    try:
        return asyncio.run(send(args["url"], args["service"], request, token, sys.stdout))
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        print(
            f"presence: could not reach {args['url']}: {error or type(error).__name__}",
            file=sys.stderr,
        )
        return 1
