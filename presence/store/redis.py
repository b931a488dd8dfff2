"""The presence store on Redis (or the embedded emulation of it): every write is one Lua script."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from presence.events import CollectionEvent, ItemEvent, ReachabilityEvent, normalised
from presence.feed.cursor import FeedCursor
from presence.feed.entries import FeedRead
from presence.keys import Keyspace
from presence.model import (
    EventResult,
    IdentityPresence,
    Outcome,
    Stats,
    StoreUnavailable,
    SweepResult,
)
from presence.store.base import Migration, OnlinePage
from presence.store.coalesce import Coalescer
from presence.store.errors import UNAVAILABLE, raise_as_store_error, unavailable_as_store_error
from presence.store.feed import FeedReader
from presence.store.listing import Listing
from presence.store.migrate import FormatError, StorageFormat
from presence.store.nodes import Promotions
from presence.store.pages import Clock, Pages, changes_of
from presence.store.push import SubscriptionStore
from presence.store.reads import Reads, StoredIdentity
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client, Scripts, run_scripts
from presence.store.sweeps import Sweeps
from presence.twilio import SID_LENGTH

TOKEN_MEMORY_SECONDS = 3600
"""How long an I-Twilio-Idempotency-Token is remembered: far beyond Twilio's retries."""

SEEN_EVENT_IDS = 1024
"""EventIds remembered per list or map to spot repeated item events."""

SEEN_MEMORY_SECONDS = 7 * 86400
"""A list or map without item events for this long forgets its EventIds."""

ACTIVITY_MEMORY_SECONDS = 2 * 3600
"""A minute of webhook outcomes is kept this long: the activity shows the last hour."""

FEED_RETENTION_MS = 86_400_000
"""How long the change feed keeps a change, unless the store is told otherwise."""

log = logging.getLogger("presence.store")

_OUTCOMES = {outcome.value: outcome for outcome in Outcome}
"""Each outcome by its text, as a script answers it: a dict is quicker than the enum's call."""

_SID_AT = len('{"service_sid":"')
"""Where a change message's ServiceSid begins (``publish.lua`` writes it first)."""


class RedisStore:
    """``PresenceStore`` on a redis-py asyncio client: a real Redis, the embedded one, or a
    Redis Cluster (``RedisCluster``), where each script runs on the node of its slot and the
    listings, stats and sweeps visit every node. Writes are here; reads, the listing, the
    feed and sweeps each have a module of their own, given the same pages and scripts."""

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
        self.scripts = Scripts(redis)
        self.pages = Pages(
            keyspace,
            self.scripts,
            grace_ms=offline_grace_ms,
            ttl_ms=endpoint_ttl_ms,
            retention_ms=feed_retention_ms,
            clock=clock,
        )
        # Webhooks arriving together share round trips (see coalesce.py).
        self._writes = Coalescer(redis, wait=wait)
        self.reads = Reads(redis, self.pages, self._writes, wait)
        self.feed = FeedReader(redis, keyspace, retention_ms=feed_retention_ms)
        self.listing = Listing(redis, keyspace, self.scripts, self.feed)
        self.sweeps = Sweeps(redis, self.pages, wait, Promotions(on_failover))
        self.subscriptions = SubscriptionStore(redis, keyspace, self.scripts)
        self.retention_ms = feed_retention_ms
        self._format = StorageFormat(redis, self.pages)
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

    async def migrate(self) -> Migration:
        """Moves whatever format-1 keys Redis holds into this format (``presence migrate``),
        whatever the format key says."""
        return await self._format.migrate()

    async def _prepared(self) -> None:
        """Before the first use of the identities (when ``prepare`` could not run at start)."""
        if self._format_ready:
            return
        try:
            await self.prepare()
        except FormatError as error:
            log.error("%s", error)
            raise StoreUnavailable(str(error)) from None

    @asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline | ClusterPipeline]:
        # On a Redis Cluster, redis-py splits the pipeline by node and sends the parts at once.
        async with unavailable_as_store_error(), self.redis.pipeline(transaction=False) as pipe:
            yield pipe

    # -- writes -----------------------------------------------------------------------------

    @staticmethod
    def _event_result(reply: list[str]) -> EventResult:
        return EventResult(
            _OUTCOMES[reply[0]],
            changes_of(reply[3:]),
            flap_suppressed=reply[1] == "1",
            endpoints_expired=int(reply[2]),
        )

    async def apply_reachability(self, event: ReachabilityEvent) -> EventResult:
        if not self._format_ready:
            await self._prepared()
        call = self.pages.event_call(event)
        try:
            reply: list[str] = await self._writes.run(call)
        except Exception as error:
            raise_as_store_error(error)
        return self._event_result(reply)

    async def apply_many(self, events: Sequence[ReachabilityEvent]) -> list[EventResult]:
        """Applies ``events`` in one pipeline (one per node), in order: to load many at once
        (the benchmarks fill Redis so). Raises the first error any of them met."""
        await self._prepared()
        async with unavailable_as_store_error():
            replies = await run_scripts(self.redis, [self.pages.event_call(e) for e in events])
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

    # -- reads ------------------------------------------------------------------------------

    async def inspect(self, service_sid: str, identity: str) -> StoredIdentity:
        """An identity's whole stored state, by the rules' names: for the tests, and to check
        a migration."""
        await self._prepared()
        return await self.reads.inspect(service_sid, identity)

    async def identity(self, service_sid: str, identity: str) -> IdentityPresence:
        (found,) = await self.lookup(service_sid, [identity])
        return found

    async def lookup(self, service_sid: str, identities: Sequence[str]) -> list[IdentityPresence]:
        if not self._format_ready:
            await self._prepared()
        return await self.reads.lookup(service_sid, identities)

    async def online(
        self, service_sid: str, limit: int, cursor: str | None, *, versions: bool = False
    ) -> OnlinePage:
        await self._prepared()
        return await self.listing.page(service_sid, limit, cursor, versions=versions)

    async def read_feed(
        self,
        service_sid: str,
        after: FeedCursor | None,
        *,
        limit: int,
        identities: Collection[str] | None = None,
    ) -> FeedRead:
        if identities is None:
            return await self.feed.read(service_sid, after, limit=limit)
        wanted = frozenset(identities)
        buckets = {self.keys.place_of(service_sid, name)[0] for name in wanted}
        read = await self.feed.read(service_sid, after, limit=limit, buckets=buckets)
        kept = [(e, c) for e, c in read.with_cursors() if e.identity in wanted]
        return replace(read, entries=[e for e, _ in kept], cursors=[c for _, c in kept])

    async def stats(self, service_sid: str) -> Stats:
        return await self.reads.stats(service_sid)

    # -- the rest ---------------------------------------------------------------------------

    async def sweep(self, limit: int) -> SweepResult:
        await self._prepared()
        return await self.sweeps.sweep(limit)

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
