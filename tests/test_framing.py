"""HTTP framing, byte by byte, against the real HTTP server and the real Redis: whatever the
framing, the service never answers 5xx and never applies a body other than the one that was
signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.web.webhooks import _form_pairs
from tests.hostile import FORM, MALLORY, World, form_body, form_pairs
from tests.hostile import world as world  # the alias keeps this fixture where pytest finds it
from tests.support import RunningApp, sign


async def raw_exchange(service: RunningApp, request: bytes, wait: float = 1.0) -> bytes:
    """Sends bytes as they are; returns every byte of the reply (empty if none came)."""
    reader, writer = await asyncio.open_connection(service.client.host, service.client.port)
    writer.write(request)
    await writer.drain()
    try:
        reply = await asyncio.wait_for(reader.read(), wait)
    except (ConnectionResetError, TimeoutError):
        reply = b""
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    return reply


def _head(world: World, body: bytes, *extra: bytes) -> bytes:
    signature = sign(world.url(), form_pairs(body) or [])
    lines = [
        b"POST /webhooks/sync HTTP/1.1",
        b"Host: " + urlsplit(world.url()).netloc.encode(),
        b"Content-Type: " + FORM.encode(),
        b"X-Twilio-Signature: " + signature.encode(),
        b"Connection: close",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


FRAMINGS = [
    "Content-Length shorter than the body",
    "Content-Length longer than the body",
    "Content-Length and chunked",
    "broken chunked",
    "Content-Length not a number",
    "two Content-Lengths",
]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_a_body_framed_wrongly_changes_nothing(
    world: World, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the framing, the service never answers 5xx and never applies a body other
    than the one that was signed."""
    body = form_body(MALLORY.items())
    size = str(len(body)).encode()
    if framing == "Content-Length shorter than the body":
        request = _head(world, body, b"Content-Length: %d" % (len(body) - 5)) + body
    elif framing == "Content-Length longer than the body":
        request = _head(world, body, b"Content-Length: %d" % (len(body) + 100)) + body
    elif framing == "Content-Length and chunked":
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        request = _head(world, body, b"Content-Length: " + size, b"Transfer-Encoding: chunked")
        request += chunked
    elif framing == "broken chunked":
        request = _head(world, body, b"Transfer-Encoding: chunked") + b"5\r\nEvent\r\nzz\r\n"
    elif framing == "Content-Length not a number":
        request = _head(world, body, b"Content-Length: 1_0") + body
    else:
        request = _head(world, body, b"Content-Length: " + size, b"Content-Length: 5") + body
    before = await world.observer.snapshot()
    with caplog.at_level(logging.ERROR):
        reply = await raw_exchange(world.service, request)
        await asyncio.sleep(0.2)  # a handler still reading when the client left, finishing
    if framing == "Content-Length longer than the body":
        assert reply == b""  # still waiting for the rest when the client gave up
    else:
        # aiohttp's own HTTP parser refuses it (in text, before any handler runs).
        assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply
    assert not [r for r in caplog.records if r.name.startswith("presence")], caplog.text
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(["a", "=", "&", "+", "%", "2", "F", "é", "%C3", "%A9", "%zz"]))
        .map("".join)
        .map(str.encode),
    )
)
def test_forms_are_read_as_parse_qsl_reads_them(body: bytes) -> None:
    """The webhook receiver's own form reader (faster) gives what the standard library's
    gives, or refuses what it refuses."""
    try:
        wanted = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            _form_pairs(body)
        return
    assert _form_pairs(body) == wanted
