"""Feed cursors: where a consumer of the change feed is, and the history it has seen.

A position is a point in the order the feed delivers changes in: the stream ID of a change
in its bucket (the Redis server's time in ms, and a sequence), then the bucket. Everything at
or before a consumer's position has been delivered to it.

A cursor also carries a digest of the history up to its position, by which a later read tells
that Redis still holds every change the consumer may have seen (``presence.store.feed``):
for each bucket it covers, the bucket's epoch (a random value that lives as long as the
bucket's data) and how many changes of the service the bucket's feed had up to the position.
Redis that lost changes at or before the position (a restart from older data, a failover to a
replica behind), lost everything, or belongs to another deployment has another history there;
a restart or failover that lost nothing has the same. The digest is a sum of one 64-bit term
per bucket, so a read moves it along change by change.

A cursor handed out with a listing of ``/online`` (its ``feed_cursor``) also records each
Redis node's replication ID: the listing's pages were read after its position, so they may
show changes after it, which a restart could lose without touching the history up to it.

All of that is one opaque URL-safe string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache

from presence.keys import BUCKETS

MAX_SEQ = 2**64 - 1
"""The largest sequence number of a stream ID."""

_VERSION = 2
_HEAD = struct.Struct(">BQQBQB")  # version, ms, seq, bucket, history digest, flags
_V1_HEAD = struct.Struct(">BQQB8sB")  # version 1: ..., epoch digest, node count
_NODE = struct.Struct(">20sQ")  # replication ID (binary), offset (version 1 only)
_REPLID = struct.Struct(">20s")
_MASK_BYTES = BUCKETS // 8
_SOME_BUCKETS = 1
"""Flag: the cursor covers some buckets (a filtered reader's), their mask follows."""
_SNAPSHOT = 2
"""Flag: a listing's cursor; a node count and the nodes' replication IDs follow."""
_MOD = 2**64


class InvalidFeedCursor(ValueError):
    """A cursor this service did not hand out."""


@dataclass(frozen=True, order=True)
class Position:
    """A point in the feed's order: (stream ID in its bucket, bucket)."""

    ms: int
    seq: int
    bucket: int

    @classmethod
    def end_of(cls, ms: int) -> Position:
        """After every change of millisecond ``ms``, in every bucket."""
        return cls(ms, MAX_SEQ, BUCKETS - 1)

    def first_after_in(self, bucket: int) -> str:
        """The first stream ID of ``bucket`` that comes after this position (for XRANGE)."""
        if bucket > self.bucket:
            return f"{self.ms}-{self.seq}"
        if self.seq == MAX_SEQ:
            return f"{self.ms + 1}-0"
        return f"{self.ms}-{self.seq + 1}"

    def last_before_in(self, bucket: int) -> str:
        """The last stream ID of ``bucket`` at or before this position (for XREAD, which
        reads what comes after the ID it is given)."""
        if bucket <= self.bucket:
            return f"{self.ms}-{self.seq}"
        if self.seq > 0:
            return f"{self.ms}-{self.seq - 1}"
        return f"{max(self.ms - 1, 0)}-{MAX_SEQ}"


@lru_cache(maxsize=8192)
def history_term(bucket: int, epoch: str, count: int) -> int:
    """One bucket's part of a history digest: its epoch, and the number of changes its feed
    had up to the position."""
    digest = hashlib.blake2b(f"{bucket}\0{epoch}\0{count}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def history_of(terms: list[int]) -> int:
    return sum(terms) % _MOD


def moved(history: int, before: int, after: int) -> int:
    """The digest with one bucket's term ``before`` replaced by ``after``."""
    return (history - before + after) % _MOD


@dataclass(frozen=True)
class FeedCursor:
    position: Position
    history: int | None
    """The digest of the history up to the position (None: a cursor of an earlier release,
    which cannot be checked: it is answered with a reset)."""
    buckets: frozenset[int] | None = None
    """The buckets the digest covers (None: all; a filtered reader's cover its identities')."""
    snapshot: frozenset[str] | None = None
    """A listing's cursor: the replication IDs of the Redis nodes when it was taken (empty
    for the embedded store, which has none)."""

    def covers(self) -> frozenset[int]:
        return frozenset(range(BUCKETS)) if self.buckets is None else self.buckets

    def encode(self) -> str:
        assert self.history is not None, "a cursor of an earlier release is never handed out"
        flags = (_SOME_BUCKETS if self.buckets is not None else 0) | (
            _SNAPSHOT if self.snapshot is not None else 0
        )
        raw = _HEAD.pack(
            _VERSION,
            self.position.ms,
            self.position.seq,
            self.position.bucket,
            self.history,
            flags,
        )
        if self.buckets is not None:
            raw += sum(1 << b for b in self.buckets).to_bytes(_MASK_BYTES, "big")
        if self.snapshot is not None:
            ids = sorted(self.snapshot)
            raw += bytes([len(ids)]) + b"".join(bytes.fromhex(i) for i in ids)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> FeedCursor:
        """Raises ``InvalidFeedCursor`` for anything ``encode`` (of this release or of the
        one before) did not make."""
        invalid = InvalidFeedCursor("cursor is not one this service handed out")
        try:
            if not text.isascii():
                raise invalid
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            if raw[:1] == b"\x01":
                return _decode_v1(raw)
            version, ms, seq, bucket, history, flags = _HEAD.unpack_from(raw)
            rest = raw[_HEAD.size :]
            buckets = None
            if flags & _SOME_BUCKETS:
                mask = int.from_bytes(rest[:_MASK_BYTES], "big")
                if len(rest) < _MASK_BYTES:
                    raise invalid
                buckets = frozenset(b for b in range(BUCKETS) if mask >> b & 1)
                rest = rest[_MASK_BYTES:]
            snapshot = None
            if flags & _SNAPSHOT:
                count = rest[0]
                ids = [rest[1 + i * 20 : 21 + i * 20] for i in range(count)]
                if len(rest) != 1 + 20 * count:
                    raise invalid
                snapshot = frozenset(i.hex() for i in ids)
                rest = b""
        except (binascii.Error, ValueError, IndexError, struct.error):
            raise invalid from None
        if version != _VERSION or bucket >= BUCKETS or rest or flags & ~(_SOME_BUCKETS | _SNAPSHOT):
            raise invalid
        return cls(Position(ms, seq, bucket), history, buckets, snapshot)


def _decode_v1(raw: bytes) -> FeedCursor:
    """A cursor of the release before this one (an epoch digest and replication offsets):
    valid, but its history cannot be checked."""
    _, ms, seq, bucket, _, count = _V1_HEAD.unpack_from(raw)
    if bucket >= BUCKETS or len(raw) != _V1_HEAD.size + count * _NODE.size:
        raise InvalidFeedCursor("cursor is not one this service handed out")
    return FeedCursor(Position(ms, seq, bucket), None)
