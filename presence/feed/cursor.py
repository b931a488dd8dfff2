"""Feed cursors: where a consumer of the change feed is, and what data it was reading.

A position is a point in the order the feed delivers changes in: the stream ID of a change
in its bucket (the Redis server's time in ms, and a sequence), then the bucket. Everything at
or before a consumer's position has been delivered to it. The position also says which data
it counted in: a digest of every bucket's epoch (a random value that lives as long as the
bucket's data: a Redis that lost its data, or another deployment, has other epochs), and the
replication history of each Redis node (its replication ID and offset: a failover that lost
writes shows in them). A cursor is all of that, as an opaque URL-safe string.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from presence.keys import BUCKETS

MAX_SEQ = 2**64 - 1
"""The largest sequence number of a stream ID."""

_VERSION = 1
_HEAD = struct.Struct(">BQQB8sB")  # version, ms, seq, bucket, epoch digest, node count
_NODE = struct.Struct(">20sQ")  # replication ID (binary), replication offset


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


@dataclass(frozen=True)
class Node:
    """One Redis node's replication history, as far as a cursor has read it."""

    replid: str
    """40 hex digits: a Redis node's replication ID (changes on restart and failover)."""
    offset: int
    """How far into that history the cursor's changes lie."""


@dataclass(frozen=True)
class Lineage:
    """What data a cursor counted in."""

    epoch: bytes
    """8 bytes: a digest of every bucket's epoch."""
    nodes: tuple[Node, ...] = ()
    """The Redis nodes, when they report their replication (the embedded store does not)."""


@dataclass(frozen=True)
class FeedCursor:
    position: Position
    lineage: Lineage

    def encode(self) -> str:
        raw = _HEAD.pack(
            _VERSION,
            self.position.ms,
            self.position.seq,
            self.position.bucket,
            self.lineage.epoch,
            len(self.lineage.nodes),
        ) + b"".join(_NODE.pack(bytes.fromhex(n.replid), n.offset) for n in self.lineage.nodes)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> FeedCursor:
        """Raises ``InvalidFeedCursor`` for anything ``encode`` did not make."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, ms, seq, bucket, epoch, count = _HEAD.unpack_from(raw)
            nodes = tuple(
                Node(replid.hex(), offset)
                for replid, offset in _NODE.iter_unpack(raw[_HEAD.size :])
            )
        except (binascii.Error, ValueError, struct.error):
            raise InvalidFeedCursor("cursor is not one this service handed out") from None
        if (
            version != _VERSION
            or not text.isascii()
            or bucket >= BUCKETS
            or len(nodes) != count
            or len(raw) != _HEAD.size + count * _NODE.size
        ):
            raise InvalidFeedCursor("cursor is not one this service handed out")
        return cls(Position(ms, seq, bucket), Lineage(epoch, nodes))
