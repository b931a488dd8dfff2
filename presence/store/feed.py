"""Reading the change feed from Redis: every bucket's stream of a service, merged in the
feed's order, up to a watermark below which no change can still appear; and checking, at
every read, that Redis still holds every change the reader's cursor may have seen.

Each change is appended to its bucket's stream (``p:{b}:f:<ServiceSid>``) by the script that
publishes it (``publish.lua``), with an ID of the Redis server's time, and numbered: the
bucket's count of the service's changes (``p:{b}:fn:<ServiceSid>``) goes up by one, and the
entry carries the new count. A read asks the node its time ``t`` first: every change stored
before that moment has an ID below ``t``, and every change stored after it an ID of ``t`` or
more, so everything up to the end of millisecond ``t - 1`` can be read for good (on a Redis
Cluster, the earliest of the nodes' watermarks). A page delivers the changes after the
cursor up to that watermark, in the order of ``Position``, and the cursor of the next page
is the last change delivered (or the watermark).

What a cursor has seen is known from the data alone (``presence.feed.cursor``): per bucket,
how many changes its feed had up to the position. The read finds that number again from what
Redis holds now: the number of the first change after the position, less one, or, with none
after it, the bucket's count (read before the changes, so a change stored in between is seen
as one after the position). A Redis restarted from older data, failed over to a replica
behind, emptied, or of another deployment gives another number or epoch in some bucket, and
the read says ``reset`` (``lost``); one that lost nothing (a clean restart, a failover to a
replica in step) gives the same, and the read goes on. A cursor older than the retention is
``retention``. Each read costs the same few commands per node whatever happened.
"""

from __future__ import annotations

import bisect
import functools
import math
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ResponseError

from presence.feed.cursor import FeedCursor, Position, history_of, history_term, moved
from presence.feed.entries import FeedEntry, FeedRead, ResetReason
from presence.keys import BUCKETS, Keyspace
from presence.store import resp
from presence.store.errors import unavailable_as_store_error
from presence.store.nodes import by_node, on_each_node
from presence.store.scripts import Client, Script, ScriptCall, run_scripts, source

RETENTION_SLACK_MS = 1000
"""A cursor must be this much younger than the retention: a change after it cannot be
trimmed between the check and the read (trimming goes by the writer's later clock)."""

_EVERY_BUCKET = list(range(BUCKETS))

Entry = tuple[str, dict[str, str]]
"""A stream entry as redis-py gives it: its ID, its fields."""


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


def _number(entry: Entry) -> int:
    """The entry's number in its bucket (0 for one written before entries were numbered)."""
    return int(entry[1].get("n", 0))


@dataclass
class _NodeRead:
    """What one node said: its time, each bucket's epoch and count, the changes after a
    position, the first change after it where only that is needed, its replication ID."""

    time_ms: int
    epochs: dict[int, str | None]
    counts: dict[int, int]
    entries: dict[int, list[Entry]] = field(default_factory=dict)
    replid: str | None = None


@dataclass
class _NodeQuery:
    """What one read asks one node (None: the one Redis): the counts of ``buckets``, and,
    ``after`` a position, at most ``limits[bucket]`` changes of each after it."""

    node: ClusterNode | None
    service_sid: str
    buckets: Sequence[int]
    after: Position | None
    limits: dict[int, int]
    groups: list[tuple[int, list[int]]] = field(init=False)
    """The changes' commands: one per bucket on a Cluster node (each its own slot), else one
    per limit, with the buckets read with it."""

    def __post_init__(self) -> None:
        if self.after is None:
            self.groups = []
        elif self.node is not None:
            self.groups = [(self.limits[b], [b]) for b in self.buckets]
        else:
            # One command per limit: a single Redis serves every bucket.
            by_limit: dict[int, list[int]] = {}
            for b in self.buckets:
                by_limit.setdefault(self.limits[b], []).append(b)
            self.groups = sorted(by_limit.items())

    @property
    def counted(self) -> int:
        """How many commands ``counts`` makes."""
        return 1 if self.node is None else len(self.buckets)

    def counts(self, keys: Keyspace) -> list[tuple[Any, ...]]:
        sid = self.service_sid
        if self.node is None:
            return [("MGET", *(k for b in self.buckets for k in _tally_keys(keys, b, sid)))]
        return [("MGET", *_tally_keys(keys, b, sid)) for b in self.buckets]  # one slot each

    def changes(self, keys: Keyspace) -> list[tuple[Any, ...]]:
        after, sid = self.after, self.service_sid
        if after is None:
            return []
        if self.node is not None:
            return [
                ("XRANGE", keys.feed(b, sid), after.first_after_in(b), "+", "COUNT", limit)
                for limit, (b,) in self.groups
            ]
        return [
            (
                "XREAD", "COUNT", limit, "STREAMS",
                *(keys.feed(b, sid) for b in these), *(after.last_before_in(b) for b in these),
            )
            for limit, these in self.groups
        ]  # fmt: skip

    def parse(self, keys: Keyspace, replies: list[Any]) -> tuple[_NodeRead, list[Any]]:
        """What the replies to ``counts`` then ``changes`` say (its time set by the caller),
        and the replies after them."""
        counted = self.counted
        if self.node is None:
            flat = _checked(replies[0])
            epochs, counts = flat[0::2], flat[1::2]
        else:
            epochs, counts = zip(*(_checked(reply) for reply in replies[:counted]), strict=True)
        read = _NodeRead(
            0,
            dict(zip(self.buckets, epochs, strict=True)),
            dict(zip(self.buckets, [int(count or 0) for count in counts], strict=True)),
        )
        read_changes = len(self.groups)
        replies = replies[counted:]
        if self.node is None:
            for reply in replies[:read_changes]:
                for key, items in _streams(_checked(reply)):
                    if items:
                        read.entries[_bucket_of(key)] = items
        else:
            for b, items in zip(self.buckets, replies[:read_changes], strict=False):
                if _checked(items):
                    read.entries[b] = items
        return read, replies[read_changes:]


class _Packer:
    """A read's commands to one Redis packed here (``resp``): redis-py's pipeline encodes each
    of a read's 500 arguments through several layers, and a push subscription or a stream
    reads at every change. Every key of a read ends with the ServiceSid, so each command is
    the keys' parts before it (made once for each length of ServiceSid) joined by it."""

    TIME = resp.pack(["TIME"])
    INFO = resp.pack(["INFO", "replication"])

    def __init__(self, keys: Keyspace) -> None:
        self.keys = keys
        self.heads = functools.lru_cache(maxsize=8)(self._heads)

    def _heads(self, size: int) -> tuple[list[str], list[str]]:
        """For a ServiceSid of ``size`` bytes, each bucket's part of the counts before it
        (its epoch, then its count's key up to the ServiceSid), and its feed's key's."""

        def head(prefix: str) -> str:
            return f"${len(prefix.encode()) + size}\r\n{prefix}"

        keys = self.keys
        tallies = [
            resp.bulk_text([keys.epoch(b)]) + head(keys.feed_count(b, "")) for b in range(BUCKETS)
        ]
        return tallies, [head(keys.feed(b, "")) for b in range(BUCKETS)]

    def commands(self, query: _NodeQuery, info: bool) -> list[bytes]:
        """TIME, the counts, the changes (and INFO replication), as ``_read_node`` sends them."""
        sid = query.service_sid
        tallies, feeds = self.heads(len(sid) if sid.isascii() else len(sid.encode()))
        joint = sid + "\r\n"
        buckets = query.buckets
        every = len(buckets) == BUCKETS
        counts = joint.join(tallies if every else [tallies[b] for b in buckets]) + joint
        commands = [self.TIME, f"*{1 + 2 * len(buckets)}\r\n$4\r\nMGET\r\n{counts}".encode()]
        after = query.after
        if after is not None:
            # An XREAD starts after the last ID at or before the position: one ID for the
            # buckets up to the position's, another for those after it (in order).
            upto = resp.bulk_text([after.last_before_in(after.bucket)])
            beyond = resp.bulk_text([after.last_before_in(after.bucket + 1)])
            for limit, these in query.groups:
                streams = joint.join(feeds if len(these) == BUCKETS else [feeds[b] for b in these])
                first_beyond = bisect.bisect_right(these, after.bucket)
                starts = upto * first_beyond + beyond * (len(these) - first_beyond)
                head = f"*{4 + 2 * len(these)}\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n"
                commands.append(
                    f"{head}{resp.bulk_text([str(limit)])}$7\r\nSTREAMS\r\n"
                    f"{streams}{joint}{starts}".encode()
                )
        if info:
            commands.append(self.INFO)
        return commands

    @staticmethod
    def as_parsed(query: _NodeQuery, replies: list[Any]) -> list[Any]:
        """The replies as redis-py's pipeline gives them: each XREAD's entries as (ID,
        fields), the INFO as the dict of its fields."""
        first = 2 + len(query.groups)
        for i in range(2, first):
            if not isinstance(replies[i], Exception):
                # An entry's fields come as a flat list.
                replies[i] = [
                    (key, [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in entries])
                    for key, entries in _streams(replies[i])
                ]
        if len(replies) > first and isinstance(replies[first], str):
            lines = replies[first].splitlines()
            replies[first] = dict(line.split(":", 1) for line in lines if ":" in line)
        return replies


def _streams(reply: Any) -> Iterable[tuple[str, Any]]:
    """An XREAD's (stream, entries): a map in RESP3, pairs in RESP2 (the embedded store's),
    nothing when no stream had any."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def _bucket_of(key: str) -> int:
    """The bucket of a key (its hash tag: the prefix has no braces)."""
    return int(key[key.index("{") + 1 : key.index("}")])


def _tally_keys(keys: Keyspace, bucket: int, service_sid: str) -> tuple[str, str]:
    """A bucket's epoch and the count of its feed's changes (one slot)."""
    return keys.epoch(bucket), keys.feed_count(bucket, service_sid)


class FeedReader:
    """Reads the feed of any service from ``redis`` (a Redis, the embedded one, a Cluster)."""

    def __init__(self, redis: Client, keys: Keyspace, *, retention_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_ms = retention_ms
        self._epoch_script = Script(source("epoch"))
        self._replication: bool | None = None
        """Whether the nodes report their replication (not the embedded store)."""
        self._packer = (
            _Packer(keys)
            if resp.supported(redis) and not isinstance(redis, RedisCluster)  # type: ignore[arg-type]
            else None
        )

    # -- one node ---------------------------------------------------------------------------

    def _groups(self, buckets: Iterable[int]) -> list[tuple[ClusterNode | None, list[int]]]:
        buckets = sorted(buckets)
        if not isinstance(self.redis, RedisCluster):
            return [(None, buckets)]
        groups = by_node(self.redis, [[self.keys.epoch(b)] for b in buckets])
        return [(node, [buckets[i] for i in members]) for node, members in groups]

    async def _read_node(self, query: _NodeQuery, replication: bool) -> _NodeRead:
        """The node's time, its buckets' epochs and counts, then (a position to read after)
        the changes after it, then (``replication``) its replication ID."""
        # TIME first: what is stored after it has an ID of at least this time. The counts
        # next, then the changes: a change stored between them is one read after the
        # position, never one counted before it and missed.
        info = replication and self._replication is not False
        replies: list[Any]
        if self._packer is not None:
            commands = self._packer.commands(query, info)
            replies = self._packer.as_parsed(query, await resp.execute(self.redis, commands))  # type: ignore[arg-type]
        else:
            target: dict[str, Any] = {} if query.node is None else {"target_nodes": query.node}
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("TIME", **target)
                for command in query.counts(self.keys):
                    pipe.execute_command(*command, **target)
                for command in query.changes(self.keys):
                    pipe.execute_command(*command, **target)
                if info:
                    pipe.execute_command("INFO", "replication", **target)
                replies = await pipe.execute(raise_on_error=False)
        seconds, micros = _checked(replies[0])
        read, rest = query.parse(self.keys, replies[1:])
        read.time_ms = int(seconds) * 1000 + int(micros) // 1000
        if rest:
            info_reply = rest[0]
            if (
                isinstance(info_reply, ResponseError)
                and "unknown command" in str(info_reply).lower()
            ):
                self._replication = False  # the embedded store: nothing to fail over
            else:
                read.replid = str(_checked(info_reply)["master_replid"])
                self._replication = True
        return read

    async def _read_nodes(
        self,
        service_sid: str,
        buckets: Collection[int],
        after: Position | None = None,
        limits: dict[int, int] | None = None,
        replication: bool = False,
    ) -> list[_NodeRead]:
        async def read_node(node: ClusterNode | None, members: list[int]) -> _NodeRead:
            query = _NodeQuery(node, service_sid, members, after, limits or {})
            return await self._read_node(query, replication)

        groups = self._groups(buckets)
        async with unavailable_as_store_error():
            if len(groups) == 1:
                reads = [await read_node(*groups[0])]
            else:
                outcomes = await on_each_node(groups, read_node)  # type: ignore[arg-type]
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        raise outcome
                reads = outcomes  # type: ignore[assignment]
            await self._make_epochs(reads)
        return reads

    async def _make_epochs(self, reads: list[_NodeRead]) -> None:
        """Buckets without an epoch yet (a Redis new, or emptied) get one, made by a script:
        two readers at once agree on it."""
        missing = [b for read in reads for b, epoch in read.epochs.items() if epoch is None]
        if not missing:
            return
        fresh = secrets.token_hex(8)
        calls = [ScriptCall(self._epoch_script, [self.keys.epoch(b)], [fresh]) for b in missing]
        made = dict(zip(missing, await run_scripts(self.redis, calls), strict=True))
        for read in reads:
            for b in read.epochs:
                if b in made:
                    epoch = made[b]
                    if isinstance(epoch, Exception):
                        raise epoch
                    read.epochs[b] = str(epoch)

    # -- cursors ----------------------------------------------------------------------------

    async def now(
        self, service_sid: str, buckets: Collection[int] | None = None, *, snapshot: bool = False
    ) -> FeedCursor:
        """The cursor of the feed's present (covering ``buckets``, else all); with
        ``snapshot``, a listing's (it records the nodes' replication IDs)."""
        covered = sorted(range(BUCKETS) if buckets is None else set(buckets))
        reads = await self._read_nodes(service_sid, covered, replication=snapshot)
        watermark = min(Position.end_of(r.time_ms - 1) for r in reads)
        # The counts were read after TIME: a change stored in between is after the watermark
        # and counted; the first change after the watermark says how many are not.
        after = await self._read_nodes(service_sid, covered, watermark, dict.fromkeys(covered, 1))
        epochs, counts = _merged(reads)
        history = _history(covered, epochs, _numbers_at(counts, after))
        ids = None
        if snapshot:
            ids = frozenset(r.replid for r in reads if r.replid is not None)
        return FeedCursor(watermark, history, None if buckets is None else frozenset(covered), ids)

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        buckets: Collection[int] | None = None,
    ) -> FeedRead:
        """The changes of ``service_sid`` after ``after`` (None: from now, none), at most
        ``limit`` of them, only from ``buckets`` when given (the buckets of the identities a
        reader follows). A cursor whose history Redis no longer holds, or older than the
        retention, gives a reset and the cursor of now."""
        wanted = _EVERY_BUCKET if buckets is None else sorted(set(buckets))
        if after is None:
            return FeedRead([], await self.now(service_sid, buckets))
        if after.history is None:
            return FeedRead([], await self.now(service_sid, buckets), ResetReason.LOST)
        # Enough per bucket to fill a page when changes are spread evenly; a bucket that
        # had more holds the watermark back to its last change read, so none is skipped.
        count = (
            limit if len(wanted) <= 8 else min(limit, max(16, math.ceil(2 * limit / len(wanted))))
        )
        # The buckets the cursor's history covers but this read does not follow: only their
        # first change after the position is needed, to check it.
        limits = dict.fromkeys(wanted, count)
        if after.buckets is not None or buckets is not None:
            limits = dict.fromkeys(after.covers(), 1) | limits
        reads = await self._read_nodes(
            service_sid, limits, after.position, limits, replication=after.snapshot is not None
        )
        epochs, counts = _merged(reads)
        seen = _Seen(epochs, _numbers_at(counts, reads))
        reason = self._reset_reason(after, reads, seen)
        if reason is not None:
            return FeedRead([], await self.now(service_sid, buckets), reason)
        return _page(service_sid, after, reads, seen, wanted, buckets is None, limit, count)

    def _reset_reason(
        self, after: FeedCursor, reads: list[_NodeRead], seen: _Seen
    ) -> ResetReason | None:
        newest = max(read.time_ms for read in reads)
        if after.position.ms < newest - self.retention_ms + RETENTION_SLACK_MS:
            return ResetReason.RETENTION
        covers = _EVERY_BUCKET if after.buckets is None else sorted(after.buckets)
        if _history(covers, seen.epochs, seen.numbers) != after.history:
            return ResetReason.LOST
        # A listing's pages may show changes after its cursor: a node that restarted or
        # failed over since (a new replication ID) may have lost them.
        if after.snapshot and any(
            read.replid is not None and read.replid not in after.snapshot for read in reads
        ):
            return ResetReason.LOST
        return None


@dataclass
class _Seen:
    """What the reads made after a position say of each bucket they read: its epoch, and how
    many changes its feed had up to the position."""

    epochs: dict[int, str]
    numbers: dict[int, int]


def _merged(reads: list[_NodeRead]) -> tuple[dict[int, str], dict[int, int]]:
    if len(reads) == 1:  # one Redis: its own, not copied (every epoch is made by now)
        return reads[0].epochs, reads[0].counts  # type: ignore[return-value]
    epochs: dict[int, str] = {}
    counts: dict[int, int] = {}
    for read in reads:
        epochs.update({b: str(e) for b, e in read.epochs.items()})
        counts.update(read.counts)
    return epochs, counts


def _numbers_at(counts: dict[int, int], reads: list[_NodeRead]) -> dict[int, int]:
    """How many changes each bucket's feed had up to the position ``reads`` were made after:
    the number of the first change after it, less one, else the bucket's count."""
    numbers = dict(counts)
    for read in reads:
        for b, entries in read.entries.items():
            numbers[b] = max(_number(entries[0]) - 1, 0)
    return numbers


def _history(buckets: list[int], epochs: dict[int, str], numbers: dict[int, int]) -> int:
    """The history digest of ``buckets`` (sorted) at their ``numbers``."""
    # Mapped rather than a comprehension: a read makes 128 terms, on every read.
    terms = map(
        history_term, buckets, map(epochs.__getitem__, buckets), map(numbers.__getitem__, buckets)
    )
    return history_of(list(terms))


def _page(
    service_sid: str,
    after: FeedCursor,
    reads: list[_NodeRead],
    seen: _Seen,
    wanted: list[int],
    everything: bool,
    limit: int,
    count: int,
) -> FeedRead:
    """The changes after ``after`` up to the watermark, at most ``limit``, each with the
    cursor right after it."""
    watermark = min(Position.end_of(r.time_ms - 1) for r in reads)
    entries: list[tuple[FeedEntry, int]] = []
    more = False
    wanted_set = set(wanted)
    for read in reads:
        for bucket, items in read.entries.items():
            if bucket not in wanted_set:
                continue
            if len(items) >= count:
                ms, seq = _parse_id(items[-1][0])
                watermark = min(watermark, Position(ms, seq, bucket))
                more = True
            for item in items:
                ms, seq = _parse_id(item[0])
                entry = FeedEntry.of(Position(ms, seq, bucket), service_sid, item[1])
                entries.append((entry, _number(item)))
    beyond = [(e, n) for e, n in entries if e.position > watermark]
    entries = sorted(
        ((e, n) for e, n in entries if after.position < e.position <= watermark),
        key=lambda pair: pair[0].position,
    )
    if len(entries) > limit:
        beyond += entries[limit:]
        entries = entries[:limit]
        watermark = entries[-1][0].position
        more = True
    position = max(watermark, after.position)

    covered = None if everything else frozenset(wanted)
    epochs, numbers = seen.epochs, seen.numbers
    # The history of what this read follows, at the position: the cursor's own (checked just
    # now) when it covers the same buckets.
    if covered == after.buckets and after.history is not None:
        history = after.history
    else:
        history = _history(wanted, epochs, numbers)
    terms: dict[int, int] = {}
    cursors = []
    for entry, number in entries:
        bucket = entry.position.bucket
        before = terms.get(bucket)
        if before is None:
            before = history_term(bucket, epochs[bucket], numbers[bucket])
        term = history_term(bucket, epochs[bucket], number)
        history = moved(history, before, term)
        terms[bucket] = term
        cursors.append(FeedCursor(entry.position, history, covered))
    # Past the last change delivered, up to the watermark, nothing more was stored in any
    # bucket: the history there is the one after the last change.
    return FeedRead(
        [e for e, _ in entries],
        FeedCursor(position, history, covered),
        more=more or bool(beyond),
        cursors=cursors,
    )


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply
