"""The presence store on Redis (or the embedded emulation of it): every write is one Lua script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline

from presence.events import CollectionEvent, ItemEvent, ReachabilityEvent, normalised
from presence.feed.cursor import FeedCursor
from presence.keys import BUCKETS, Keyspace, due_member, split_due_member
from presence.store.base import (
    Change,
    EventResult,
    FeedRead,
    IdentityPresence,
    OnlinePage,
    Outcome,
    Stats,
    StoreUnavailable,
    SweepResult,
)
from presence.store.coalesce import Coalescer
from presence.store.cursor import decode_cursor, encode_cursor
from presence.store.errors import UNAVAILABLE, unavailable_as_store_error
from presence.store.feed import FeedReader
from presence.store.fields import presence_of
from presence.store.nodes import by_node, on_each_node
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


PARTIAL_SWEEP_LOG_SECONDS = 30.0
"""While a Redis Cluster node is down, sweeps skip it, saying so at most this often."""


@dataclass
class _Swept:
    """What sweeping some buckets did."""

    changes: list[Change] = field(default_factory=list)
    more: bool = False
    lag_ms: int = 0
    endpoints_expired: int = 0


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
    ) -> None:
        self.redis = redis
        self.keys = keyspace
        self._grace = str(offline_grace_ms)
        self._ttl = str(endpoint_ttl_ms)
        self._retention = str(feed_retention_ms)
        self._clock = clock
        self._feed = FeedReader(redis, keyspace, retention_ms=feed_retention_ms)
        self._scripts = Scripts(redis)
        # Webhooks arriving together share round trips (see coalesce.py).
        self._writes = Coalescer(redis)
        self._partial_sweep_logged = 0.0

    def _identity_call(self, service_sid: str, identity: str) -> tuple[list[str], list[str]]:
        """KEYS and the first ARGV shared by apply_event.lua and fire_due.lua (state.lua)."""
        keys = self.keys
        bucket = keys.bucket_of(service_sid + identity)
        head = '{"service_sid":' + json.dumps(service_sid) + ',"identity":' + json.dumps(identity)
        return (
            [
                keys.identity(bucket, service_sid, identity),
                keys.online(bucket, service_sid),
                keys.counters(bucket, service_sid),
                keys.due(bucket),
                keys.feed(bucket, service_sid),
            ],
            [
                identity,
                due_member(service_sid, identity),
                self._grace,
                self._ttl,
                "" if self._clock is None else str(self._clock()),
                keys.changes_channel,
                keys.identity_channel(service_sid, identity),
                head,
                self._retention,
            ],
        )

    @asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline | ClusterPipeline]:
        # On a Redis Cluster, redis-py splits the pipeline by node and sends the parts at once.
        async with unavailable_as_store_error(), self.redis.pipeline(transaction=False) as pipe:
            yield pipe

    def _event_call(self, event: ReachabilityEvent) -> ScriptCall:
        keys, args = self._identity_call(event.service_sid, event.identity)
        args += [
            event.endpoint_id,
            str(event.event_id),
            "1" if event.is_identity_online else "0",
            "1" if event.connected else "0",
        ]
        return ScriptCall(self._scripts.apply_event, keys, args)

    @staticmethod
    def _event_result(reply: list[str]) -> EventResult:
        return EventResult(
            Outcome(reply[0]),
            _changes(reply[3:]),
            flap_suppressed=reply[1] == "1",
            endpoints_expired=int(reply[2]),
        )

    async def apply_reachability(self, event: ReachabilityEvent) -> EventResult:
        call = self._event_call(event)
        async with unavailable_as_store_error():
            reply: list[str] = await self._writes.call(call.script, call.keys, call.args)
        return self._event_result(reply)

    async def apply_many(self, events: Sequence[ReachabilityEvent]) -> list[EventResult]:
        """Applies ``events`` in one pipeline (one per node), in order: to load many at once
        (the benchmarks fill Redis so). Raises the first error any of them met."""
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
        message = json.dumps(normalised(event), separators=(",", ":"))
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
            reply: str = await self._writes.call(self._scripts.record, keys, args)
        return Outcome(reply)

    async def identity(self, service_sid: str, identity: str) -> IdentityPresence:
        # One command, not a pipeline of one: a pipeline costs a third more CPU per GET.
        bucket = self.keys.bucket_of(service_sid + identity)
        async with unavailable_as_store_error():
            state: dict[str, str] = await self.redis.hgetall(  # type: ignore[assignment]
                self.keys.identity(bucket, service_sid, identity)
            )
        return presence_of(service_sid, identity, state)

    async def lookup(self, service_sid: str, identities: Sequence[str]) -> list[IdentityPresence]:
        async with self._pipeline() as pipe:
            for name in identities:
                bucket = self.keys.bucket_of(service_sid + name)
                pipe.hgetall(self.keys.identity(bucket, service_sid, name))
            states: list[dict[str, str]] = await pipe.execute()
        return [
            presence_of(service_sid, name, state)
            for name, state in zip(identities, states, strict=True)
        ]

    async def online(self, service_sid: str, limit: int, cursor: str | None) -> OnlinePage:
        if cursor:
            bucket, after, feed = decode_cursor(cursor)
        else:
            # The feed's position before anything is read: a change made while the pages are
            # read is after it, so the listing plus the feed from it is the current state.
            bucket, after, feed = 0, "", (await self.read_feed(service_sid, None, limit=1)).cursor
        names: list[str] = []
        while bucket < BUCKETS:
            batch = range(bucket, min(bucket + LISTING_BUCKETS_PER_TRIP, BUCKETS))
            async with self._pipeline() as pipe:
                for b in batch:
                    start = "(" + after if b == bucket and after else "-"
                    pipe.zrange(
                        self.keys.online(b, service_sid),
                        start,
                        "+",
                        bylex=True,
                        offset=0,
                        num=limit - len(names),
                    )
                found: list[list[str]] = await pipe.execute()
            for b, members in zip(batch, found, strict=True):
                names.extend(members[: limit - len(names)])
                if len(names) == limit:
                    # Names in a bucket are ordered, so the next page resumes after the last.
                    return OnlinePage(names, encode_cursor(b, names[-1], feed), feed)
            bucket, after = batch.stop, ""
        return OnlinePage(names, None, feed)

    async def read_feed(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        identities: Collection[str] | None = None,
        check: bool = True,
    ) -> FeedRead:
        if identities is None:
            return await self._feed.read(service_sid, after, limit=limit, check=check)
        wanted = frozenset(identities)
        buckets = {self.keys.bucket_of(service_sid + name) for name in wanted}
        read = await self._feed.read(service_sid, after, limit=limit, buckets=buckets, check=check)
        return replace(read, entries=[e for e in read.entries if e.identity in wanted])

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
        # Each node's own clock says what is due on it: tick.lua goes by the same clock to
        # decide whether a deadline has come, so a node whose clock lags another's can
        # neither have its deadlines skipped nor be asked again and again about early ones.
        now = await self._now_ms(node)
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.zrangebyscore(
                    self.keys.due(bucket), "-inf", now, start=0, num=share, withscores=True
                )
            per_bucket: list[list[tuple[str, float]]] = await pipe.execute()
        members = [member for found in per_bucket for member, _ in found]
        if not members:
            return _Swept()
        # Another replica may visit the same members meanwhile: fire_due.lua reads the due
        # time again inside its atomic step, so only the first visit fires anything.
        calls = [
            ScriptCall(self._scripts.fire_due, *self._identity_call(*split_due_member(member)))
            for member in members
        ]
        replies: list[list[str]] = []
        for reply in await run_scripts(self.redis, calls):
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
        done = [reply for reply in replies if reply[0] == "done"]
        oldest = min(score for found in per_bucket for _, score in found)
        return _Swept(
            [change for reply in done for change in _changes(reply[2:])],
            more=any(len(found) == share for found in per_bucket),
            lag_ms=max(0, now - int(oldest)),
            endpoints_expired=sum(int(reply[1]) for reply in done),
        )

    async def _sweep_cluster(self, cluster: RedisCluster, share: int) -> list[_Swept]:
        """Sweeps every node of the cluster at once, each its own buckets. A node that is
        down does not hold up the others: only when none could be swept is it an error."""
        async with unavailable_as_store_error():
            await cluster.initialize()
            groups = by_node(cluster, [[self.keys.due(bucket)] for bucket in range(BUCKETS)])

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
        # An even share per bucket: identities are spread evenly over the buckets.
        share = max(1, limit // BUCKETS)
        if isinstance(self.redis, RedisCluster):
            swept = await self._sweep_cluster(self.redis, share)
        else:
            async with unavailable_as_store_error():
                swept = [await self._sweep_buckets(range(BUCKETS), share)]
        return SweepResult(
            [change for part in swept for change in part.changes],
            more=any(part.more for part in swept),
            lag_ms=max(part.lag_ms for part in swept),
            endpoints_expired=sum(part.endpoints_expired for part in swept),
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
        await self.redis.aclose()
