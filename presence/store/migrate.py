"""The storage format of a keyspace, and the migration from format 1 (``presence migrate``,
and on start).

A keyspace says which format it holds in one key (``keys.format``). Format 1, written by the
releases before it, had no such key: a hash per identity, an online index per bucket and
service, a due set per bucket (``keys.py``). A keyspace without the key is migrated: every
format-1 identity hash found by SCAN is moved into its page by one script call
(``lua/migrate.lua``, atomic per identity, so that replicas migrating at once, or a migration
interrupted and run again, do no harm), the format-1 indexes go, and the key is set.

Old and new releases do not share a Redis: a format-1 writer next to a format-2 one would
each see the other's identities as never seen. A release of format 2 therefore refuses to
start while format-1 keys reappear after the migration (an old replica still running), and
``presence migrate``, run once the old replicas are stopped, moves what they wrote.

Format 3 has format 2's keys; only an identity's value is laid out anew (codec.lua), and a
value of format 2 says so by its flags. A keyspace of format 2 needs no migration: its values
are read as they are and rewritten as they are next written; its format key is set to 3 when
a replica starts, so that a release of format 2, which would misread the new values, refuses
to start on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from presence.keys import BUCKETS, FORMAT, READ_AS_IS, page_member, v1_due_member
from presence.store.base import Migration
from presence.store.errors import unavailable_as_store_error
from presence.store.pages import Pages
from presence.store.scripts import Client, ScriptCall, run_scripts

log = logging.getLogger("presence.store")

BATCH = 500
"""Identities moved per pipeline."""

PROGRESS_SECONDS = 5.0


class FormatError(Exception):
    """The keyspace holds a format this release cannot serve as it is."""


class StorageFormat:
    """Checks and migrates the keyspace of ``redis`` (the identity pages of ``pages``)."""

    def __init__(self, redis: Client, pages: Pages) -> None:
        self.redis = redis
        self.pages = pages
        self.keys = pages.keys

    async def current(self) -> str | None:
        async with unavailable_as_store_error():
            value = await self.redis.get(self.keys.format)
        return None if value is None else str(value)

    async def v1_writers(self) -> bool:
        """Whether format-1 due sets exist: an old replica has written since the migration
        (every online identity of format 1 had a due entry while its TTL ran)."""
        async with unavailable_as_store_error(), self.redis.pipeline(False) as pipe:
            for bucket in range(BUCKETS):
                pipe.exists(self.keys.v1_due(bucket))
            found: list[int] = await pipe.execute()
        return any(found)

    async def ensure(self) -> Migration | None:
        """Makes the keyspace this release's format, migrating it if it is format 1; returns
        the migration (None if there was none). Raises ``FormatError`` when it cannot:
        written by a newer release, or format 1 still being written beside it."""
        value = await self.current()
        if value in READ_AS_IS:
            # Nothing to move: its values are read as they are (see READ_AS_IS).
            async with unavailable_as_store_error():
                await self.redis.set(self.keys.format, FORMAT)
            log.info(
                "storage format %s marked as format %s (values rewritten as written)", value, FORMAT
            )
            value = FORMAT
        if value == FORMAT:
            if await self.v1_writers():
                raise FormatError(
                    "this Redis has format-1 keys written after its migration to storage "
                    f"format {FORMAT}: a replica of an older presence is still running against "
                    "it. Stop it, then run `presence migrate`"
                )
            return None
        if value is not None:
            raise FormatError(
                f"this Redis holds storage format {value}, written by a newer presence; this "
                f"release reads formats {', '.join([*READ_AS_IS, FORMAT])} (and migrates format 1)"
            )
        return await self.migrate()

    async def migrate(self) -> Migration:
        """Moves every format-1 identity into its page, drops the format-1 indexes and sets
        the format key. Safe to run again, and beside another replica doing the same."""
        before = await self.current()
        if before is not None and before != FORMAT and before not in READ_AS_IS:
            raise FormatError(f"this Redis holds storage format {before}, not 1 or {FORMAT}")
        started = time.monotonic()
        last_said = started
        outcomes: list[str] = []
        batch: list[tuple[int, str, str]] = []
        hashes = self.redis.scan_iter(match=self.keys.v1_identities(), count=1000)
        async with unavailable_as_store_error():
            async for key in hashes:
                place = self.keys.split_v1_identity(key)
                if place is not None:
                    batch.append(place)
                if len(batch) == BATCH:
                    outcomes += await self._move(batch)
                    batch = []
                if time.monotonic() - last_said > PROGRESS_SECONDS:
                    last_said = time.monotonic()
                    log.info("migrating to storage format %s: %d so far", FORMAT, len(outcomes))
            outcomes += await self._move(batch)
            await self._drop_v1_indexes()
            await self.redis.set(self.keys.format, FORMAT)
        migration = Migration(
            found=len(outcomes),
            moved=outcomes.count("moved"),
            kept=outcomes.count("kept"),
            seconds=round(time.monotonic() - started, 3),
            format_before=before,
        )
        if migration.found:
            log.info(
                "migrated to storage format %s: %d identities (%d moved, %d already there) "
                "in %.1fs",
                FORMAT,
                migration.found,
                migration.moved,
                migration.kept,
                migration.seconds,
            )
        return migration

    async def _move(self, batch: Sequence[tuple[int, str, str]]) -> list[str]:
        pages, keys = self.pages, self.keys
        calls = []
        for bucket, service_sid, identity in batch:
            _, page = keys.place_of(service_sid, identity)
            page_keys = pages.keys_of(service_sid, bucket, page)[:4]
            calls.append(
                ScriptCall(
                    pages.scripts.migrate,
                    [
                        *page_keys,
                        keys.v1_identity(bucket, service_sid, identity),
                        keys.v1_online(bucket, service_sid),
                        keys.v1_due(bucket),
                    ],
                    [
                        identity,
                        page_member(service_sid, page),
                        pages.endpoint_ttl_ms,
                        v1_due_member(service_sid, identity),
                    ],
                )
            )
        replies = await run_scripts(self.redis, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [str(reply) for reply in replies]

    async def _drop_v1_indexes(self) -> None:
        """The format-1 online indexes and due sets: empty by now but for entries of
        identities whose hash had already gone."""
        redis = self.redis
        names = [self.keys.v1_due(bucket) for bucket in range(BUCKETS)]
        names += [key async for key in redis.scan_iter(match=self.keys.v1_onlines(), count=1000)]
        for name in names:
            await redis.delete(name)
