"""Where an identity lives (its bucket and page) and how a page's scripts are called: their
KEYS and ARGV (``state.lua``), with the store's grace, TTL, retention and clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.asyncio.cluster import ClusterNode

from presence.events import ReachabilityEvent
from presence.keys import Keyspace, split_page_member
from presence.model import Change
from presence.store.scripts import Client, ScriptCall, Scripts

Clock = Callable[[], int]
"""Milliseconds since the epoch. Without one, the Redis server's clock is used, so replicas
whose clocks disagree still agree on every deadline."""


def changes_of(messages: Sequence[str]) -> tuple[Change, ...]:
    """The changes a script published, from the messages it returns."""
    return tuple(Change.from_message(message) for message in messages)


class Pages:
    """The identity pages of ``keys``, and the calls of their scripts."""

    def __init__(
        self,
        keys: Keyspace,
        scripts: Scripts,
        *,
        grace_ms: int,
        ttl_ms: int,
        retention_ms: int,
        clock: Clock | None,
    ) -> None:
        self.keys = keys
        self.scripts = scripts
        self.endpoint_ttl_ms = ttl_ms
        self.clock = clock
        self._grace = str(grace_ms)
        self._ttl = str(ttl_ms)
        self._retention = str(retention_ms)

    def keys_of(self, service_sid: str, bucket: int, page: int) -> list[str]:
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

    def args(self, service_sid: str, page: int) -> list[str]:
        """The ARGV of a page's scripts (state.lua)."""
        return [
            service_sid,
            str(page),
            self._grace,
            self._ttl,
            "" if self.clock is None else str(self.clock()),
            self.keys.changes_channel,
            self._retention,
        ]

    def event_call(self, event: ReachabilityEvent) -> ScriptCall:
        """The call of apply_event.lua for a connect or disconnect."""
        service_sid, identity = event.service_sid, event.identity
        bucket, page = self.keys.place_of(service_sid, identity)
        args = [
            identity,
            *self.args(service_sid, page),
            event.endpoint_id,
            str(event.event_id),
            "1" if event.is_identity_online else "0",
            "1" if event.connected else "0",
        ]
        return ScriptCall(self.scripts.apply_event, self.keys_of(service_sid, bucket, page), args)

    def fire_call(self, member: str, bucket: int) -> ScriptCall:
        """The call of fire_due.lua for a page of a bucket's due pages."""
        service_sid, page = split_page_member(member)
        return ScriptCall(
            self.scripts.fire_due,
            self.keys_of(service_sid, bucket, page),
            self.args(service_sid, page),
        )

    async def now_ms(self, redis: Client, node: ClusterNode | None = None) -> int:
        """Now: by the store's clock if it has one, else by the Redis server's clock (on a
        Redis Cluster, ``node``'s: the clock its scripts go by)."""
        if self.clock is not None:
            return self.clock()
        if node is None:
            seconds, micros = await redis.time()
        else:
            seconds, micros = await redis.time(target_nodes=node)
        return int(seconds) * 1000 + int(micros) // 1000
