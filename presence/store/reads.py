"""What queries read of identities: is X online (``read.lua``, many in one round trip), an
identity's whole stored state (``inspect.lua``), and a service's counters."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence import rules
from presence.keys import BUCKETS, PAGES
from presence.model import IdentityPresence, Stats
from presence.store import resp
from presence.store.coalesce import Coalescer
from presence.store.errors import raise_as_store_error, unavailable_as_store_error
from presence.store.pages import Pages
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client, ScriptCall, run_scripts

KEPT_PAGE_KEYS = BUCKETS * PAGES
"""Pages whose keys a store keeps packed for lookups: every page of one service, about 600
bytes each (the least recently used forgotten first, as ``Pages`` keeps its calls' parts)."""

_PageKeys = tuple[tuple[str, str], str]
"""A page's key and graveyard key, and the two packed as the protocol writes them."""


def presence_of(service_sid: str, identity: str, row: Sequence[Any]) -> IdentityPresence:
    """What a query answers, from a row of read.lua."""
    online, pending, version, top, changed_at, *endpoints = row
    if len(endpoints) > 1:  # nearly always one: a lookup makes a thousand of these
        endpoints.sort()
    return IdentityPresence._make(
        (
            service_sid,
            identity,
            online == 1,
            pending == 1,
            tuple(endpoints),
            None if top == "" else top,
            None if changed_at == "" else changed_at,
            version,
        )
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


class Reads:
    """The identity reads of a store (see the module)."""

    def __init__(
        self, redis: Client, pages: Pages, writes: Coalescer, wait: ReplicaWait | None
    ) -> None:
        self.redis = redis
        self.pages = pages
        self.keys = pages.keys
        self.scripts = pages.scripts
        self._writes = writes
        self._wait = wait
        self._page_keys = functools.lru_cache(maxsize=KEPT_PAGE_KEYS)(self._page_keys_of)

    async def inspect(self, service_sid: str, identity: str) -> StoredIdentity:
        """An identity's whole stored state, by the rules' names."""
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

    def read_calls(
        self, service_sid: str, identities: Sequence[str]
    ) -> list[tuple[ScriptCall, list[int]]]:
        """One read.lua call per bucket (so one hash slot), each with the positions in
        ``identities`` of the names it reads, packed for the protocol as it is made: a
        lookup's thousand names cost their packing once, not again for each layer."""
        place_of, page_keys = self.keys.place_of, self._page_keys
        by_bucket: dict[int, tuple[list[str], list[str], list[str], list[int]]] = {}
        for position, name in enumerate(identities):
            bucket, page = place_of(service_sid, name)
            group = by_bucket.get(bucket)
            if group is None:
                group = by_bucket[bucket] = ([], [], [], [])
            pair, packed_pair = page_keys(service_sid, bucket, page)
            group[0].extend(pair)
            group[1].append(packed_pair)
            group[2].append(name)
            group[3].append(position)
        read = self.scripts.read
        calls = []
        for keys, packed_keys, names, positions in by_bucket.values():
            head = f"*{len(read.head) + 1 + len(keys) + len(names)}\r\n"
            packed = head + resp.bulk_text((*read.head, str(len(keys))))
            packed += "".join(packed_keys) + resp.bulk_text(names)
            calls.append((ScriptCall(read, keys, names, packed.encode()), positions))
        return calls

    def _page_keys_of(self, service_sid: str, bucket: int, page: int) -> _PageKeys:
        """A page's keys as read.lua takes them, and packed (kept: ``_page_keys``)."""
        keys = (
            self.keys.page(bucket, service_sid, page),
            self.keys.graveyard(bucket, service_sid, page),
        )
        return keys, resp.bulk_text(keys)

    async def lookup(self, service_sid: str, identities: Sequence[str]) -> list[IdentityPresence]:
        calls = self.read_calls(service_sid, identities)
        found: list[IdentityPresence] = [None] * len(identities)  # type: ignore[list-item]
        # A try rather than unavailable_as_store_error(): a context manager for each GET
        # costs more than the try.
        try:
            if self._wait is None and self._writes.pipelined:
                # On the webhooks' pipelined connection: no connection taken from the pool,
                # and reads made together share a round trip (with a WAIT to make, each
                # batch would hold them up: they take their own).
                replies = await self._writes.call_many([call for call, _ in calls])
            else:
                replies = await run_scripts(self.redis, [call for call, _ in calls])
        except Exception as error:
            raise_as_store_error(error)
        for (call, positions), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                raise_as_store_error(reply)
            for name, position, row in zip(call.args, positions, reply, strict=True):
                found[position] = presence_of(service_sid, str(name), row)
        return found

    async def stats(self, service_sid: str) -> Stats:
        async with unavailable_as_store_error(), self.redis.pipeline(transaction=False) as pipe:
            for bucket in range(BUCKETS):
                pipe.hmget(
                    self.keys.counters(bucket, service_sid), "online", "pending", "endpoints"
                )
            rows: list[list[str | None]] = await pipe.execute()
        totals = [sum(int(row[i] or 0) for row in rows) for i in range(3)]
        return Stats(online=totals[0], pending_offline=totals[1], endpoints=totals[2])
