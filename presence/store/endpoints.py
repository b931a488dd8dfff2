"""An EndpointId in the form the identity scripts keep it (``codec.lua``, ``endpoint_bytes``):
a lowercase UUID, what Sync's EndpointIds look like, as a zero byte and its 16 bytes; any
other as its length in UTF-8 (one byte below 255, else 255 and two bytes) and those bytes.

Every webhook of a connection names one. The service packs it before the call, rather than
``apply_event`` in Redis at every call: Redis is the one part every replica shares, and a
UUID parsed in Lua took about a twelfth of its time per webhook (docs/benchmarks.md)."""

from __future__ import annotations

import re

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def packed_endpoint(endpoint_id: str) -> bytes:
    """``endpoint_id`` packed as ``codec.lua``'s ``endpoint_bytes`` packs it."""
    if len(endpoint_id) == 36 and _UUID.fullmatch(endpoint_id):
        return b"\0" + bytes.fromhex(endpoint_id.replace("-", ""))
    raw = endpoint_id.encode()
    if len(raw) < 255:
        return len(raw).to_bytes(1, "big") + raw
    # An EndpointId is at most 1,024 characters (events.py): its length fits two bytes.
    return b"\xff" + len(raw).to_bytes(2, "big") + raw
