"""PackedReply: a webhook's 200 written from bytes made ahead, exactly as aiohttp writes it."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, RawTestServer, TestServer

from presence.twilio import JSON
from presence.web.packed import PackedReply

BODY = b'{"status":"applied"}'
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


async def exchange(server: BaseTestServer, *requests: bytes) -> bytes:
    """What the server sends back for ``requests``, sent on one connection."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        answered = b""
        async with asyncio.timeout(10):
            while answered.count(BODY) < len(requests):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                answered += chunk
        return answered
    finally:
        writer.close()


def post(version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"POST /webhooks/sync HTTP/{version}\r\nHost: example\r\nContent-Length: 3\r\n"
        f"{extra}\r\nA=1"
    ).encode()


async def answers(packed: bool, *requests: bytes) -> tuple[bytes, list[web.StreamResponse]]:
    replies: list[web.StreamResponse] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        reply = PackedReply(BODY) if packed else web.Response(body=BODY, content_type=JSON)
        replies.append(reply)
        return reply

    async with RawTestServer(handler) as server:
        return await exchange(server, *requests), replies


def same_but_date(one: bytes, other: bytes) -> bool:
    # Two runs may fall in different seconds; everything else must be byte for byte.
    return DATE.sub(b"\r\nDate: -\r\n", one) == DATE.sub(b"\r\nDate: -\r\n", other)


@pytest.mark.parametrize(
    ("requests", "is_packed"),
    [
        ((post(),), True),
        ((post(), post()), True),  # kept alive: the second on the same connection
        ((post(extra="Connection: close\r\n"),), False),
        ((post("1.0"),), False),
        ((post("1.0", "Connection: keep-alive\r\n"),), False),
    ],
)
async def test_the_bytes_are_aiohttps_own(requests: tuple[bytes, ...], is_packed: bool) -> None:
    packed, packed_replies = await answers(True, *requests)
    plain, plain_replies = await answers(False, *requests)
    assert packed.count(BODY) == len(requests)
    assert same_but_date(packed, plain), (packed, plain)
    # Written from the bytes made ahead exactly where they fit, and counted as aiohttp
    # counts a reply's bytes (the access log's "bytes").
    assert [reply.packed for reply in packed_replies if isinstance(reply, PackedReply)] == [
        is_packed
    ] * len(requests)
    assert [r.body_length for r in packed_replies] == [r.body_length for r in plain_replies]
    assert all(r.body_length > len(BODY) for r in packed_replies)


def test_it_is_made_as_aiohttp_makes_a_response() -> None:
    """Its constructor sets what ``web.Response``'s does, without calling it: an aiohttp that
    sets more (or other values) fails here rather than in a reply."""
    packed = vars(PackedReply(BODY))
    plain = vars(web.Response(body=BODY, content_type=JSON))
    assert packed.pop("packed") is False
    assert packed.keys() == plain.keys()
    for name, value in plain.items():
        assert packed[name] == value, name
    assert packed["_headers"] is not vars(PackedReply(BODY))["_headers"]


def date_of(reply: bytes) -> bytes:
    found = DATE.search(reply)
    assert found is not None
    return found.group()


async def test_a_new_second_gets_a_new_date() -> None:
    """The bytes are made again when aiohttp's clock moves on, not kept with a stale Date."""
    first, _ = await answers(True, post())
    deadline = asyncio.get_running_loop().time() + 5
    second = first
    while date_of(second) == date_of(first) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        second, _ = await answers(True, post())
    assert date_of(second) != date_of(first)
    assert same_but_date(first, second)


async def test_a_routed_request_is_answered_by_aiohttps_own_way() -> None:
    """Through the router, the app's on_response_prepare signal may change a reply: it is
    written by aiohttp, with what the signal set."""
    replies: list[PackedReply] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        replies.append(PackedReply(BODY))
        return replies[-1]

    async def signed(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Prepared"] = "yes"

    app = web.Application()
    app.router.add_post("/webhooks/sync", handler)
    app.on_response_prepare.append(signed)
    async with TestServer(app) as server:
        answered = await exchange(server, post())
    assert b"\r\nX-Prepared: yes\r\n" in answered
    assert [reply.packed for reply in replies] == [False]
