"""The presence store on Redis (or the embedded emulation of it): every write is one Lua script."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline

from presence import rules
from presence.events import CollectionEvent, ItemEvent, ReachabilityEvent, normalised
from presence.feed.cursor import FeedCursor
from presence.keys import BUCKETS, PAGES, Keyspace, split_page_member
from presence.store.base import (
    Change,
    EventResult,
    FeedRead,
    IdentityPresence,
    OnlinePage,
    Outcome,
    ReplicasBehind,
    Stats,
    StoreUnavailable,
    SweepResult,
)
from presence.store.coalesce import Coalescer
from presence.store.cursor import decode_cursor, encode_cursor
from presence.store.errors import UNAVAILABLE, raise_as_store_error, unavailable_as_store_error
from presence.store.feed import FeedReader
from presence.store.migrate import FormatError, Migration, StorageFormat
from presence.store.nodes import Promotions, by_node, on_each_node
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client, ScriptCall, Scripts, run_scripts
from presence.twilio import SID_LENGTH

Clock = Callable[[], int]
"""Milliseconds since the epoch. Without one, the Redis server's clock is used, so replicas
whose clocks disagree still agree on every deadline."""

TOKEN_MEMORY_SECONDS = 3600
"""How long an I-Twilio-Idempotency-Token is remembered: far beyond Twilio's retries."""

SEEN_EVENT_IDS = 1024
"""EventIds remembered per list or map to spot repeated item events."""

SEEN_MEMORY_SECONDS = 7 * 86400
"""A list or map without item events for this long forgets its EventIds."""

LISTING_BUCKETS_PER_TRIP = 16

ACTIVITY_MEMORY_SECONDS = 2 * 3600
"""A minute of webhook outcomes is kept this long: the activity shows the last hour."""

FEED_RETENTION_MS = 86_400_000
"""How long the change feed keeps a change, unless the store is told otherwise."""

log = logging.getLogger("presence.store")

_SID_AT = len('{"service_sid":"')
"""Where a change message's ServiceSid begins (``publish.lua`` writes it first)."""


def _changes(messages: Sequence[str]) -> tuple[Change, ...]:
    return tuple(Change.from_message(message) for message in messages)


def presence_of(service_sid: str, identity: str, row: Sequence[Any]) -> IdentityPresence:
    """What a query answers, from a row of read.lua."""
    online, pending, version, top, changed_at, *endpoints = row
    return IdentityPresence(
        service_sid,
        identity,
        online == 1,
        pending == 1,
        tuple(sorted(endpoints)),
        None if top == "" else top,
        None if changed_at == "" else changed_at,
        version,
    )


@dataclass(frozen=True)
class StoredIdentity:
    """What inspect.lua reads of an identity: rules.Identity's fields, and where it is kept
    (``page``, ``graveyard`` or ``none``) and when its page is next due for it (0: never)."""

    where: str
    due: int
    state: rules.Identity

    @classmethod
    def from_reply(cls, name: str, reply: Sequence[Any]) -> StoredIdentity:
        where, due, version, published, changed_at, top, top_online, top_at = reply[:8]
        deadline, deadline_event, off_floor, off_endpoint, forgotten_floor = reply[8:13]
        connected, tombstones = reply[13:]

        def number(text: str) -> int | None:
            return int(text) if text else None

        def marks(flat: Sequence[str]) -> dict[str, rules.Mark]:
            return {
                flat[i]: rules.Mark(int(flat[i + 1]), int(flat[i + 2]))
                for i in range(0, len(flat), 3)
            }

        state = rules.Identity(
            name,
            connected=marks(connected),
            tombstones=marks(tombstones),
            forgotten_floor=number(forgotten_floor),
            off_floor=number(off_floor),
            off_endpoint=off_endpoint or None,
            top=number(top),
            top_online=top_online == "1",
            top_at=int(top_at or 0),
            published_online=published == "1",
            version=int(version),
            changed_at=number(changed_at),
            deadline=number(deadline),
            deadline_event=number(deadline_event),
            compacted=where == "graveyard",
        )
        return cls(where, int(due or 0), state)


def _pages(reply: Sequence[Any], versions: bool) -> list[tuple[int, dict[str, int]]]:
    """The pages of a reply of list.lua, 0-based, each with its names (and their versions,
    when asked for; else 0)."""
    pages: list[tuple[int, dict[str, int]]] = []
    position = 0
    step = 2 if versions else 1
    while position < len(reply):
        page, count = int(reply[position]), int(reply[position + 1])
        flat = reply[position + 2 : position + 2 + count * step]
        names = flat[::step]
        found = (
            dict(zip(names, map(int, flat[1::2]), strict=True))
            if versions
            else dict.fromkeys(names, 0)
        )
        pages.append((page - 1, found))
        position += 2 + count * step
    return pages


PARTIAL_SWEEP_LOG_SECONDS = 30.0
"""While a Redis Cluster node is down, sweeps skip it, saying so at most this often."""


@dataclass
class _Swept:
    """What sweeping some buckets did."""

    changes: list[Change] = field(default_factory=list)
    more: bool = False
    lag_ms: int = 0
    endpoints_expired: int = 0
    next_due_in_ms: int | None = None
    replicas_behind: int = 0


class RedisStore:
    """``PresenceStore`` on a redis-py asyncio client: a real Redis, the embedded one, or a
    Redis Cluster (``RedisCluster``), where each script runs on the node of its slot and the
    listings, stats and sweeps visit every node."""

    def __init__(
        self,
        redis: Client,
        keyspace: Keyspace,
        *,
        offline_grace_ms: int,
        endpoint_ttl_ms: int,
        feed_retention_ms: int = FEED_RETENTION_MS,
        clock: Clock | None = None,
        wait: ReplicaWait | None = None,
        on_failover: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.wait = wait
        """With replicas to wait for, every write (webhooks, firings) waits (replication.py)."""
        self.keys = keyspace
        self._grace = str(offline_grace_ms)
        self.endpoint_ttl_ms = endpoint_ttl_ms
        self._ttl = str(endpoint_ttl_ms)
        self._retention = str(feed_retention_ms)
        self._clock = clock
        self._feed = FeedReader(redis, keyspace, retention_ms=feed_retention_ms)
        self.scripts = Scripts(redis)
        # Webhooks arriving together share round trips (see coalesce.py).
        self._writes = Coalescer(redis, wait=wait)
        self._promotions = Promotions(on_failover)
        self._partial_sweep_logged = 0.0
        self._format = StorageFormat(self)
        self._format_ready = False
        self._format_lock = asyncio.Lock()

    async def prepare(self) -> Migration | None:
        """Makes sure Redis holds this release's storage format, migrating format 1 (see
        migrate.py); returns the migration made, if any. Raises ``FormatError`` when Redis
        holds a format this release must not serve, ``StoreUnavailable`` when Redis cannot
        be reached (the check is then made again on the next use)."""
        async with self._format_lock:
            if self._format_ready:
                return None
            migration = await self._format.ensure()
            self._format_ready = True
            return migration

    async def _prepared(self) -> None:
        """Before the first use of the identities (when ``prepare`` could not run at start)."""
        try:
            await self.prepare()
        except FormatError as error:
            log.error("%s", error)
            raise StoreUnavailable(str(error)) from None

    def page_keys(self, service_sid: str, bucket: int, page: int) -> list[str]:
        """The KEYS of the identity scripts for a page (state.lua)."""
        keys = self.keys
        return [
            keys.page(bucket, service_sid, page),
            keys.graveyard(bucket, service_sid, page),
            keys.counters(bucket, service_sid),
            keys.due_pages(bucket),
            keys.feed(bucket, service_sid),
            keys.feed_count(bucket, service_sid),
        ]

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(self._clock())

    def _page_args(self, service_sid: str, page: int) -> list[str]:
        """The ARGV of a page's scripts (state.lua)."""
        return [
            service_sid,
            str(page),
            self._grace,
            self._ttl,
            self._now_arg(),
            self.keys.changes_channel,
            self._retention,
        ]

    def _event_call(self, event: ReachabilityEvent) -> ScriptCall:
        service_sid, identity = event.service_sid, event.identity
        bucket, page = self.keys.place_of(service_sid, identity)
        args = [
            identity,
            *self._page_args(service_sid, page),
            event.endpoint_id,
            str(event.event_id),
            "1" if event.is_identity_online else "0",
            "1" if event.connected else "0",
        ]
        return ScriptCall(self.scripts.apply_event, self.page_keys(service_sid, bucket, page), args)

    def _fire_call(self, member: str, bucket: int) -> ScriptCall:
        service_sid, page = split_page_member(member)
        return ScriptCall(
            self.scripts.fire_due,
            self.page_keys(service_sid, bucket, page),
            self._page_args(service_sid, page),
        )

    @asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline | ClusterPipeline]:
        # On a Redis Cluster, redis-py splits the pipeline by node and sends the parts at once.
        async with unavailable_as_store_error(), self.redis.pipeline(transaction=False) as pipe:
            yield pipe

    @staticmethod
    def _event_result(reply: list[str]) -> EventResult:
        return EventResult(
            Outcome(reply[0]),
            _changes(reply[3:]),
            flap_suppressed=reply[1] == "1",
            endpoints_expired=int(reply[2]),
        )

    async def apply_reachability(self, event: ReachabilityEvent) -> EventResult:
        if not self._format_ready:
            await self._prepared()
        call = self._event_call(event)
        try:
            reply: list[str] = await self._writes.call(call.script, call.keys, call.args)
        except Exception as error:
            raise_as_store_error(error)
        return self._event_result(reply)

    async def apply_many(self, events: Sequence[ReachabilityEvent]) -> list[EventResult]:
        """Applies ``events`` in one pipeline (one per node), in order: to load many at once
        (the benchmarks fill Redis so). Raises the first error any of them met."""
        if not self._format_ready:
            await self._prepared()
        async with unavailable_as_store_error():
            replies = await run_scripts(self.redis, [self._event_call(e) for e in events])
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return [self._event_result(reply) for reply in replies]

    async def record(self, event: CollectionEvent, token: str | None) -> Outcome:
        bucket = self.keys.bucket_of(event.subject_sid)
        keys: list[str] = []
        if token is not None:
            keys.append(self.keys.token(bucket, token))
        item_event_id = str(event.event_id) if isinstance(event, ItemEvent) else ""
        removes = event.event_type in ("list_removed", "map_removed")
        if item_event_id or removes:
            keys.append(self.keys.seen(bucket, event.subject_sid))
        message = orjson.dumps(normalised(event)).decode()
        args: list[str | int] = [
            "1" if token is not None else "0",
            item_event_id,
            "1" if removes else "0",
            self.keys.sync_events_channel,
            message,
            TOKEN_MEMORY_SECONDS,
            SEEN_EVENT_IDS,
            SEEN_MEMORY_SECONDS,
        ]
        async with unavailable_as_store_error():
            reply: str = await self._writes.call(self.scripts.record, keys, args)
        return Outcome(reply)

    async def inspect(self, service_sid: str, identity: str) -> StoredIdentity:
        """An identity's whole stored state, by the rules' names: for the tests, and to check
        a migration."""
        if not self._format_ready:
            await self._prepared()
        bucket, page = self.keys.place_of(service_sid, identity)
        keys = [
            self.keys.page(bucket, service_sid, page),
            self.keys.graveyard(bucket, service_sid, page),
        ]
        async with unavailable_as_store_error():
            (reply,) = await run_scripts(
                self.redis, [ScriptCall(self.scripts.inspect, keys, [identity])]
            )
        if isinstance(reply, Exception):
            raise reply
        return StoredIdentity.from_reply(identity, reply)

    async def identity(self, service_sid: str, identity: str) -> IdentityPresence:
        (found,) = await self.lookup(service_sid, [identity])
        return found

    def _read_calls(
        self, service_sid: str, identities: Sequence[str]
    ) -> list[tuple[ScriptCall, list[int]]]:
        """One read.lua call per bucket (so one hash slot), each with the positions in
        ``identities`` of the names it reads."""
        keys = self.keys
        by_bucket: dict[int, tuple[list[str], list[str], list[int]]] = {}
        for position, name in enumerate(identities):
            bucket, page = keys.place_of(service_sid, name)
            group = by_bucket.get(bucket)
            if group is None:
                group = by_bucket[bucket] = ([], [], [])
            group[0].extend(
                (keys.page(bucket, service_sid, page), keys.graveyard(bucket, service_sid, page))
            )
            group[1].append(name)
            group[2].append(position)
        return [
            (ScriptCall(self.scripts.read, call_keys, names), positions)
            for call_keys, names, positions in by_bucket.values()
        ]

    async def lookup(self, service_sid: str, identities: Sequence[str]) -> list[IdentityPresence]:
        if not self._format_ready:
            await self._prepared()
        calls = self._read_calls(service_sid, identities)
        found: list[IdentityPresence] = [None] * len(identities)  # type: ignore[list-item]
        async with unavailable_as_store_error():
            if self.wait is None and self._writes.pipelined:
                # On the webhooks' pipelined connection: no connection taken from the pool,
                # and reads made together share a round trip (with a WAIT to make, each
                # batch would hold them up: they take their own).
                replies = await self._writes.call_many([call for call, _ in calls])
            else:
                replies = await run_scripts(self.redis, [call for call, _ in calls])
            for (call, positions), reply in zip(calls, replies, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                for name, position, row in zip(call.args, positions, reply, strict=True):
                    found[position] = presence_of(service_sid, str(name), row)
        return found

    async def online(
        self, service_sid: str, limit: int, cursor: str | None, *, versions: bool = False
    ) -> OnlinePage:
        if not self._format_ready:
            await self._prepared()
        if cursor:
            bucket, page, after, feed = decode_cursor(cursor)
        else:
            # The feed's position before anything is read: a change made while the pages are
            # read is after it, so the listing plus the feed from it is the current state.
            bucket, page, after = 0, 0, ""
            feed = await self._feed.now(service_sid, snapshot=True)
        found: dict[str, int] = {}

        def done(next_cursor: str | None) -> OnlinePage:
            return OnlinePage(
                list(found), next_cursor, feed, list(found.values()) if versions else None
            )

        while bucket < BUCKETS:
            batch = range(bucket, min(bucket + LISTING_BUCKETS_PER_TRIP, BUCKETS))
            calls = [
                ScriptCall(
                    self.scripts.list,
                    [self.keys.page(b, service_sid, g) for g in range(PAGES)],
                    [page + 1 if b == bucket else 1, limit - len(found), "1" if versions else ""],
                )
                for b in batch
            ]
            async with unavailable_as_store_error():
                replies = await run_scripts(self.redis, calls)
            resume: tuple[int, int] | None = None
            for b, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                pages = _pages(reply, versions)
                for g, listed in pages:
                    # A page's names in code-point order: its part of the listing resumes
                    # after the last name given.
                    skip = after if (b, g) == (bucket, page) else None
                    for name in sorted(n for n in listed if skip is None or n > skip):
                        found[name] = listed[name]
                        if len(found) == limit:
                            return done(encode_cursor(b, g, name, feed))
                if pages and pages[-1][0] < PAGES - 1:
                    # list.lua stopped once it had enough names, some of which were before
                    # the cursor: the rest of this bucket comes next.
                    resume = (b, pages[-1][0] + 1)
                    break
            bucket, page, after = (*resume, "") if resume else (batch.stop, 0, "")
        return done(None)

    async def read_feed(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        identities: Collection[str] | None = None,
    ) -> FeedRead:
        if identities is None:
            return await self._feed.read(service_sid, after, limit=limit)
        wanted = frozenset(identities)
        buckets = {self.keys.place_of(service_sid, name)[0] for name in wanted}
        read = await self._feed.read(service_sid, after, limit=limit, buckets=buckets)
        kept = [(e, c) for e, c in read.with_cursors() if e.identity in wanted]
        return replace(read, entries=[e for e, _ in kept], cursors=[c for _, c in kept])

    async def stats(self, service_sid: str) -> Stats:
        async with self._pipeline() as pipe:
            for bucket in range(BUCKETS):
                pipe.hmget(
                    self.keys.counters(bucket, service_sid), "online", "pending", "endpoints"
                )
            rows: list[list[str | None]] = await pipe.execute()
        totals = [sum(int(row[i] or 0) for row in rows) for i in range(3)]
        return Stats(online=totals[0], pending_offline=totals[1], endpoints=totals[2])

    async def _now_ms(self, node: ClusterNode | None = None) -> int:
        """Now: by the store's clock if it has one, else by the Redis server's clock (on a
        Redis Cluster, ``node``'s: the clock its scripts go by)."""
        if self._clock is not None:
            return self._clock()
        if node is None:
            seconds, micros = await self.redis.time()
        else:
            seconds, micros = await self.redis.time(target_nodes=node)
        return seconds * 1000 + micros // 1000

    async def _sweep_buckets(
        self, buckets: Sequence[int], share: int, node: ClusterNode | None = None
    ) -> _Swept:
        """Sweeps ``buckets`` (on a Redis Cluster: those whose slots ``node`` serves)."""
        # Each node's own clock says what is due on it: fire_due.lua goes by the same clock to
        # decide whether a deadline has come, so a node whose clock lags another's can
        # neither have its deadlines skipped nor be asked again and again about early ones.
        now = await self._now_ms(node)
        # The first pages of each bucket by due time, one more than its share: those due are
        # visited, and the first one not due says when to come back.
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.zrange(self.keys.due_pages(bucket), 0, share, withscores=True)
            per_bucket: list[list[tuple[str, float]]] = await pipe.execute()
        due = [[(m, int(score)) for m, score in first if score <= now] for first in per_bucket]
        later = [int(score) for first in per_bucket for _, score in first if score > now]
        next_due_in = min(later) - now if later else None
        if not any(due):
            return _Swept(next_due_in_ms=next_due_in)
        # Another replica may visit the same pages meanwhile: fire_due.lua reads the due
        # time again inside its atomic step, so only the first visit fires anything.
        calls = [
            self._fire_call(member, bucket)
            for bucket, found in zip(buckets, due, strict=True)
            for member, _ in found[:share]
        ]
        replies: list[list[str]] = []
        behind = 0
        for reply in await run_scripts(self.redis, calls, self.wait):
            if isinstance(reply, ReplicasBehind):
                # Fired and published already: counted, and kept (replication.py).
                behind += 1
                reply = reply.reply
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
        done = [reply for reply in replies if reply[0] == "done"]
        oldest = min(score for found in due for _, score in found)
        return _Swept(
            [change for reply in done for change in _changes(reply[2:])],
            more=any(len(found) > share for found in due),
            lag_ms=max(0, now - oldest),
            endpoints_expired=sum(int(reply[1]) for reply in done),
            next_due_in_ms=next_due_in,
            replicas_behind=behind,
        )

    async def _sweep_cluster(self, cluster: RedisCluster, share: int) -> list[_Swept]:
        """Sweeps every node of the cluster at once, each its own buckets. A node that is
        down does not hold up the others: only when none could be swept is it an error."""
        async with unavailable_as_store_error():
            await cluster.initialize()
            self._promotions.check(cluster)
            groups = by_node(cluster, [[self.keys.due_pages(bucket)] for bucket in range(BUCKETS)])

        async def sweep_node(node: ClusterNode, buckets: list[int]) -> _Swept:
            async with unavailable_as_store_error():
                return await self._sweep_buckets(buckets, share, node)

        swept: list[_Swept] = []
        failed: list[tuple[str, Exception]] = []
        for (node, _), outcome in zip(groups, await on_each_node(groups, sweep_node), strict=True):
            if isinstance(outcome, StoreUnavailable):
                failed.append((node.name, outcome))
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                swept.append(outcome)
        if failed and not swept:
            raise failed[0][1]
        if failed and time.monotonic() - self._partial_sweep_logged > PARTIAL_SWEEP_LOG_SECONDS:
            self._partial_sweep_logged = time.monotonic()
            for name, error in failed:
                log.warning("sweep: Redis Cluster node %s skipped: %s", name, error)
        return swept

    async def sweep(self, limit: int) -> SweepResult:
        if not self._format_ready:
            await self._prepared()
        # An even share per bucket: pages are spread evenly over the buckets.
        share = max(1, limit // BUCKETS)
        if isinstance(self.redis, RedisCluster):
            swept = await self._sweep_cluster(self.redis, share)
        else:
            async with unavailable_as_store_error():
                swept = [await self._sweep_buckets(range(BUCKETS), share)]
        soonest = [part.next_due_in_ms for part in swept if part.next_due_in_ms is not None]
        return SweepResult(
            [change for part in swept for change in part.changes],
            more=any(part.more for part in swept),
            lag_ms=max(part.lag_ms for part in swept),
            endpoints_expired=sum(part.endpoints_expired for part in swept),
            next_due_in_ms=min(soonest, default=None),
            replicas_behind=sum(part.replicas_behind for part in swept),
        )

    async def add_activity(self, counts: Mapping[tuple[str, int], Mapping[str, int]]) -> None:
        async with self._pipeline() as pipe:
            for (service_sid, minute), outcomes in counts.items():
                key = self.keys.activity(service_sid, minute)
                for outcome, n in outcomes.items():
                    pipe.hincrby(key, outcome, n)
                pipe.expire(key, ACTIVITY_MEMORY_SECONDS)
            await pipe.execute()

    async def activity(self, service_sid: str, minutes: Sequence[int]) -> list[dict[str, int]]:
        async with self._pipeline() as pipe:
            for minute in minutes:
                pipe.hgetall(self.keys.activity(service_sid, minute))
            found: list[dict[str, str]] = await pipe.execute()
        return [{k: int(v) for k, v in counts.items()} for counts in found]

    async def published(self) -> AsyncIterator[str]:
        """The ServiceSid of each change as it is published (to wake the feed's readers), for
        as long as it is iterated; rides out Redis outages, missing what they hide."""
        backoff = 0.1
        while True:
            # Held as Any: redis-py's PubSub.aclose is not typed.
            pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.changes_channel)
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and isinstance(message["data"], str):
                        yield message["data"][_SID_AT : _SID_AT + SID_LENGTH]
            except (*UNAVAILABLE, redis_errors.RedisError) as error:
                log.warning("feed wake-ups: lost Redis (%s); again in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def ping(self) -> None:
        async with unavailable_as_store_error():
            await self.redis.ping()

    async def close(self) -> None:
        await self._writes.close()
        await self.redis.aclose()
