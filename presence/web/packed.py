"""A webhook's 200 written as bytes made ahead, below aiohttp's response machinery.

Nearly every webhook is answered with one of four small JSON bodies. aiohttp writes a reply
by building its headers in a multidict, adding Content-Length, Date and Server, serializing
them and writing headers and body: 6% of a webhook's instructions (docs/benchmarks.md).
The same bytes, made once per second (only the Date header moves) and per body, cost one
write. They are exactly the bytes aiohttp writes for the same ``web.Response``
(``tests/test_packed.py`` compares them off the wire), and a request they would not fit
(HTTP/1.0, a connection to close, one that went through the router) is answered by aiohttp's
own way.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from multidict import CIMultiDict

from presence.twilio import JSON


class _Packs:
    """Each body's whole reply for the current second's Date header."""

    def __init__(self) -> None:
        self.date = ""
        self.replies: dict[bytes, bytes] = {}

    def reply(self, body: bytes) -> bytes:
        # aiohttp's own clock: the same string object for a whole second, so the check is
        # an identity test, and the Date is the one aiohttp would have written.
        date = rfc822_formatted_time()
        if date is not self.date:
            self.date, self.replies = date, {}
        packed = self.replies.get(body)
        if packed is None:
            packed = self.replies[body] = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
                f"Date: {date}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n"
            ).encode() + body
        return packed


_packs = _Packs()
_HEADERS: CIMultiDict[str] = CIMultiDict({hdrs.CONTENT_TYPE: JSON})


class PackedReply(web.Response):
    """A 200 with a JSON body, written in one piece of bytes made ahead when the request is
    HTTP/1.1, keeps its connection and came below the router (every webhook Twilio sends to
    ``presence serve``), else as any Response.

    Only for a reply nobody changes after making it: its status, headers and body are the
    ones given here, whatever is set on it later."""

    def __init__(self, body: bytes) -> None:
        # What web.Response(body=body, content_type=JSON) sets, at a third of its cost (one
        # is made for every webhook); tests/test_packed.py compares the two.
        self._state = {}
        self._headers = _HEADERS.copy()
        self._set_status(200, None)
        self._body = body
        self._compressed_body = None
        self._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
        self._zlib_executor = None
        self.packed = False
        """Whether it was written from the bytes made ahead."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if (
            self._payload_writer is not None
            or self._eof_sent
            or request.version != HttpVersion11
            or not request.keep_alive
            # Routed (a webhook with Expect, say): the app's on_response_prepare may change it.
            or getattr(request, "_match_info", None) is not None
        ):
            return await super().prepare(request)
        self.packed = True
        self._keep_alive = True
        self._req = request
        writer = self._payload_writer = request._payload_writer
        await writer.write(_packs.reply(self._body))  # type: ignore[arg-type]
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.packed:
            await super().write_eof(data)
            return
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None
        await writer.write_eof()
        self._eof_sent = True
        self._req = None
        # As aiohttp counts it: every byte written, headers included.
        self._body_length = writer.output_size
        self._payload_writer = None
