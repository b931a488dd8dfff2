"""Reading the change feed from Redis: every bucket's stream of a service, merged in the
feed's order, up to a watermark below which no change can still appear.

Each change is appended to its bucket's stream (``p:{b}:f:<ServiceSid>``) by the script that
publishes it (``publish.lua``), with an ID of the Redis server's time. A read asks the node its
time ``t`` first: every change stored before that moment has an ID below ``t``, and every
change stored after it an ID of ``t`` or more, so everything up to the end of millisecond
``t - 1`` can be read for good (on a Redis Cluster, the earliest of the nodes' watermarks).
A page delivers the changes after the cursor up to that watermark, in the order of
``Position``, and the cursor of the next page is the last change delivered (or the watermark).

A cursor is resumed only from the data it counted in (see ``presence.feed.cursor``): when the
buckets' epochs differ, a node's replication history lost what the cursor had read, or the
cursor is older than the retention, the read says ``reset`` instead of silently skipping.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ResponseError

from presence.feed.cursor import FeedCursor, Lineage, Node, Position
from presence.keys import BUCKETS, Keyspace
from presence.store.base import FeedEntry, FeedRead, Reset
from presence.store.errors import unavailable_as_store_error
from presence.store.nodes import by_node, on_each_node
from presence.store.scripts import Client, ScriptCall, run_scripts, source

RETENTION_SLACK_MS = 1000
"""A cursor must be this much younger than the retention: a change after it cannot be
trimmed between the check and the read (trimming goes by the writer's later clock)."""


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


@dataclass
class _NodeRead:
    """What one node said: its time, its changes per bucket, its replication history."""

    time_ms: int
    entries: dict[int, list[tuple[str, dict[str, str]]]]
    replication: dict[str, Any] | None


class FeedReader:
    """Reads the feed of any service from ``redis`` (a Redis, the embedded one, a Cluster)."""

    def __init__(self, redis: Client, keys: Keyspace, *, retention_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_ms = retention_ms
        self._epoch_script = redis.register_script(source("epoch"))
        self._replication: bool | None = None
        """Whether the nodes report their replication (not the embedded store)."""

    # -- the data a cursor counts in -------------------------------------------------------

    async def epoch(self) -> bytes:
        """The digest of every bucket's epoch (each made on first use)."""
        fresh = secrets.token_hex(8)
        calls = [
            ScriptCall(self._epoch_script, [self.keys.epoch(bucket)], [fresh])
            for bucket in range(BUCKETS)
        ]
        async with unavailable_as_store_error():
            replies = await run_scripts(self.redis, calls)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return hashlib.sha256("".join(replies).encode()).digest()[:8]

    # -- reading ----------------------------------------------------------------------------

    def _groups(self, buckets: Sequence[int]) -> list[tuple[ClusterNode | None, list[int]]]:
        if not isinstance(self.redis, RedisCluster):
            return [(None, list(buckets))]
        groups = by_node(self.redis, [[self.keys.epoch(b)] for b in buckets])
        return [(node, [buckets[i] for i in members]) for node, members in groups]

    async def _read_node(
        self,
        node: ClusterNode | None,
        service_sid: str,
        buckets: Sequence[int],
        after: Position | None,
        count: int,
    ) -> _NodeRead:
        """The node's time, then (``after`` a position) its changes after it, then its
        replication history."""
        target: dict[str, Any] = {} if node is None else {"target_nodes": node}
        keys = [self.keys.feed(b, service_sid) for b in buckets]
        async with self.redis.pipeline(transaction=False) as pipe:
            # TIME first: what is stored after it has an ID of at least this time.
            pipe.execute_command("TIME", **target)
            if after is None:
                pass
            elif node is None:
                # One command for every bucket: a single Redis serves them all.
                starts = [after.last_before_in(b) for b in buckets]
                pipe.execute_command("XREAD", "COUNT", count, "STREAMS", *keys, *starts)
            else:
                for bucket, key in zip(buckets, keys, strict=True):
                    pipe.execute_command(
                        "XRANGE", key, after.first_after_in(bucket), "+", "COUNT", count
                    )
            if self._replication is not False:
                pipe.execute_command("INFO", "replication", **target)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        seconds, micros = _checked(replies[0])
        entries: dict[int, list[tuple[str, dict[str, str]]]] = {}
        if after is None:
            rest = replies[1:]
        elif node is None:
            found = dict(_checked(replies[1]) or [])
            entries = {b: found[k] for b, k in zip(buckets, keys, strict=True) if k in found}
            rest = replies[2:]
        else:
            for bucket, items in zip(buckets, replies[1 : 1 + len(buckets)], strict=True):
                if _checked(items):
                    entries[bucket] = items
            rest = replies[1 + len(buckets) :]
        replication = None
        if rest:
            info = rest[0]
            if isinstance(info, ResponseError) and "unknown command" in str(info).lower():
                self._replication = False  # the embedded store: nothing to fail over
            else:
                replication = _checked(info)
                self._replication = True
        return _NodeRead(int(seconds) * 1000 + int(micros) // 1000, entries, replication)

    async def read(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        buckets: Collection[int] | None = None,
        check: bool = True,
    ) -> FeedRead:
        """The changes of ``service_sid`` after ``after`` (None: from now, none), at most
        ``limit`` of them, only from ``buckets`` when given (the buckets of the identities a
        reader follows). With ``check``, a cursor that cannot be resumed from is a reset."""
        wanted = sorted(set(range(BUCKETS) if buckets is None else buckets))
        # Enough per bucket to fill a page when changes are spread evenly; a bucket that
        # had more holds the watermark back to its last change read, so none is skipped.
        count = (
            limit if len(wanted) <= 8 else min(limit, max(16, math.ceil(2 * limit / len(wanted))))
        )
        start = None if after is None else after.position

        async def read_node(node: ClusterNode | None, members: list[int]) -> _NodeRead:
            return await self._read_node(node, service_sid, members, start, count)

        async with unavailable_as_store_error():
            reads = await self._gather(self._groups(wanted), read_node)
            epoch = await self.epoch() if check or after is None else after.lineage.epoch
        lineage = Lineage(epoch, tuple(_node(r.replication) for r in reads if r.replication))
        watermark = min(Position.end_of(r.time_ms - 1) for r in reads)
        now = FeedCursor(watermark, lineage)
        if after is None:
            return FeedRead([], now)
        if check:
            reason = self._reset_reason(after, now, reads)
            if reason is not None:
                return FeedRead([], now, reason)
        entries: list[FeedEntry] = []
        more = False
        for read in reads:
            for bucket, items in read.entries.items():
                if len(items) >= count:
                    ms, seq = _parse_id(items[-1][0])
                    watermark = min(watermark, Position(ms, seq, bucket))
                    more = True
                for stream_id, fields in items:
                    ms, seq = _parse_id(stream_id)
                    entries.append(FeedEntry.of(Position(ms, seq, bucket), service_sid, fields))
        held = [e for e in entries if e.position > watermark]
        entries = sorted(
            (e for e in entries if after.position < e.position <= watermark),
            key=lambda e: e.position,
        )
        if len(entries) > limit:
            entries = entries[:limit]
            watermark = entries[-1].position
            more = True
        position = max(watermark, after.position)
        return FeedRead(entries, FeedCursor(position, lineage), more=more or bool(held))

    async def _gather(self, groups: Any, read_node: Any) -> list[_NodeRead]:
        if len(groups) == 1:
            node, members = groups[0]
            return [await read_node(node, members)]
        outcomes = await on_each_node(groups, read_node)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def _reset_reason(
        self, after: FeedCursor, now: FeedCursor, reads: list[_NodeRead]
    ) -> str | None:
        if after.lineage.epoch != now.lineage.epoch:
            return Reset.EPOCH
        for read in reads:
            if read.replication is not None and not _continues(
                after.lineage.nodes, read.replication
            ):
                return Reset.FAILOVER
        newest = max(read.time_ms for read in reads)
        if after.position.ms < newest - self.retention_ms + RETENTION_SLACK_MS:
            return Reset.RETENTION
        return None


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _node(replication: dict[str, Any] | None) -> Node:
    assert replication is not None
    return Node(str(replication["master_replid"]), int(replication["master_repl_offset"]))


def _continues(seen: Sequence[Node], replication: dict[str, Any]) -> bool:
    """True when this node's data still holds everything a cursor that saw ``seen`` read:
    the same replication history (offsets only grow), or a replica promoted with all of it."""
    current = str(replication["master_replid"])
    previous = str(replication.get("master_replid2", ""))
    promoted_at = int(replication.get("second_repl_offset", -1))
    return any(
        node.replid == current or (node.replid == previous and promoted_at > node.offset)
        for node in seen
    )
