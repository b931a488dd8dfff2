"""Every Redis key and channel name the service uses, in one place.

Layout (``p`` is ``PRESENCE_KEY_PREFIX``, ``b`` a bucket, ``g`` a page, ``IS..`` a ServiceSid)::

    p:{b}:h:IS..:<g>          hash    a page: identity -> its state (codec.lua)
    p:{b}:g:IS..:<g>          string  the page's graveyard: records of compacted identities
    p:{b}:n:IS..              hash    counters: online, pending, endpoints
    p:{b}:dq                  zset    IS..:<g> -> when something of that page is next due
    p:{b}:f:IS..              stream  the change feed: this bucket's changes of the service
    p:{b}:fn:IS..             string  how many changes that feed has ever had (never expires)
    p:{b}:epoch               string  a random value that lives as long as the bucket's data
    p:act:IS..:<minute>       hash    webhook outcomes of the service in that minute
    p:{b}:tok:<token>         string  an I-Twilio-Idempotency-Token already recorded
    p:{b}:seen:<ListSid|MapSid> zset  EventIds of item events already recorded
    p:{b}:w                   string  written before each WAIT (store/replication.py)
    p:format                  string  the storage format of this keyspace (migrate.py)

Push subscriptions (presence/store/push.py), every key of one service's in one slot::

    p:{push:IS..}:ids            zset    subscription id -> when it was created (ms)
    p:{push:IS..}:sub:<id>       hash    a subscription: its URL, secrets, state, committed
                                         cursor and delivery status
    p:{push:IS..}:lease:<id>     string  the replica delivering it, and its fencing token (10 s)
    p:{push:IS..}:fence:<id>     string  the last fencing token handed out
    p:{push:IS..}:attempts:<id>  list    its last 50 attempts, newest first
    p:push:services              set     the services that have (or had) subscriptions
    p:push:replicas              zset    replica id -> until when it said it is alive (ms)

Storage format 1 (releases before format 2; read only by ``presence migrate``)::

    p:{b}:i:IS..:<identity>   hash    one identity (fields: presence/store/lua/migrate.lua)
    p:{b}:on:IS..             zset    identities published online
    p:{b}:due                 zset    IS..<identity> -> when it is next due

The ``{b}`` hash tag puts an identity's page and every key it updates in one Redis Cluster
hash slot, so each Lua script touches a single slot. An identity's bucket and page come from a
hash of (ServiceSid, identity): a page holds the identities of one service, a bucket and a
page, so that a service of a million has pages of about 120 (BUCKETS x PAGES of them), each
small enough for Redis' compact encoding; a collection's keys are bucketed by its SID.
"""

from __future__ import annotations

import zlib

from presence.twilio import SID_LENGTH

BUCKETS = 128
"""Number of hash-tag buckets. Part of the storage format: every replica must agree on it."""

PAGES = 64
"""Pages per bucket and service. Part of the storage format too."""

FORMAT = "3"
"""This storage format: the keys of format 2, an identity's value in codec.lua's varint layout
(1 was a hash per identity, with an online index and a due entry)."""

READ_AS_IS = ("2",)
"""Formats this release reads without a migration: format 2's values (codec.lua's fixed-width
layout) are decoded as they are and rewritten in this format's layout at their next write. A
keyspace of one of them is marked as this format when a replica starts, so that a release of
format 2, which cannot read the new layout, refuses to start on it."""


def _validate_prefix(prefix: str) -> str:
    if not prefix:
        raise ValueError("must not be empty")
    if any(c in prefix for c in "{} \t\r\n"):
        raise ValueError("must not contain braces or whitespace")
    return prefix


class Keyspace:
    """Names of the keys and channels under one prefix."""

    def __init__(self, prefix: str = "presence") -> None:
        self.prefix = _validate_prefix(prefix)
        self.changes_channel = f"{prefix}:changes"
        self.sync_events_channel = f"{prefix}:sync-events"
        self.format = f"{prefix}:format"
        self._tags = [f"{prefix}:{{{b}}}" for b in range(BUCKETS)]

    @staticmethod
    def bucket_of(name: str) -> int:
        """The bucket of a collection SID."""
        return zlib.crc32(name.encode("utf-8")) % BUCKETS

    @staticmethod
    def place_of(service_sid: str, identity: str) -> tuple[int, int]:
        """The bucket and page of an identity."""
        h = zlib.crc32((service_sid + identity).encode("utf-8"))
        return h % BUCKETS, h // BUCKETS % PAGES

    def page(self, bucket: int, service_sid: str, page: int) -> str:
        return f"{self._tags[bucket]}:h:{service_sid}:{page}"

    def graveyard(self, bucket: int, service_sid: str, page: int) -> str:
        return f"{self._tags[bucket]}:g:{service_sid}:{page}"

    def counters(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:n:{service_sid}"

    def due_pages(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:dq"

    def feed(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:f:{service_sid}"

    def feed_count(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:fn:{service_sid}"

    def epoch(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:epoch"

    def token(self, bucket: int, token: str) -> str:
        return f"{self._tags[bucket]}:tok:{token}"

    def seen(self, bucket: int, collection_sid: str) -> str:
        return f"{self._tags[bucket]}:seen:{collection_sid}"

    def barrier(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:w"

    def activity(self, service_sid: str, minute: int) -> str:
        """Webhook outcomes of one minute (by the epoch second it starts at): one key a
        minute, so the last hour is 60 reads and older minutes simply expire."""
        return f"{self.prefix}:act:{service_sid}:{minute}"

    # -- push subscriptions -----------------------------------------------------------------

    def push_ids(self, service_sid: str) -> str:
        return f"{self.prefix}:{{push:{service_sid}}}:ids"

    def push_subscription(self, service_sid: str, subscription_id: str) -> str:
        return f"{self.prefix}:{{push:{service_sid}}}:sub:{subscription_id}"

    def push_lease(self, service_sid: str, subscription_id: str) -> str:
        return f"{self.prefix}:{{push:{service_sid}}}:lease:{subscription_id}"

    def push_fence(self, service_sid: str, subscription_id: str) -> str:
        return f"{self.prefix}:{{push:{service_sid}}}:fence:{subscription_id}"

    def push_attempts(self, service_sid: str, subscription_id: str) -> str:
        return f"{self.prefix}:{{push:{service_sid}}}:attempts:{subscription_id}"

    @property
    def push_services(self) -> str:
        return f"{self.prefix}:push:services"

    @property
    def push_replicas(self) -> str:
        return f"{self.prefix}:push:replicas"

    def identity_channel(self, service_sid: str, identity: str) -> str:
        """The channel of one identity's changes (state.lua's ``about`` names it alike)."""
        return f"{self.changes_channel}:{service_sid}:{identity}"

    # -- storage format 1, for the migration ------------------------------------------------

    def v1_identities(self) -> str:
        """A SCAN pattern matching every format-1 identity hash."""
        return f"{self.prefix}:{{*}}:i:*"

    def v1_onlines(self) -> str:
        """A SCAN pattern matching every format-1 online index."""
        return f"{self.prefix}:{{*}}:on:*"

    def v1_identity(self, bucket: int, service_sid: str, identity: str) -> str:
        return f"{self._tags[bucket]}:i:{service_sid}:{identity}"

    def v1_online(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:on:{service_sid}"

    def v1_due(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:due"

    def split_v1_identity(self, key: str) -> tuple[int, str, str] | None:
        """The bucket, ServiceSid and identity of a format-1 identity hash's name (None
        for any other name)."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head):
            return None
        tag_end = key.find("}:i:", len(head))
        bucket = key[len(head) : tag_end]
        rest = key[tag_end + 4 :]
        if tag_end < 0 or not bucket.isdigit() or len(rest) < SID_LENGTH + 1:
            return None
        if rest[SID_LENGTH] != ":" or int(bucket) >= BUCKETS:
            return None
        return int(bucket), rest[:SID_LENGTH], rest[SID_LENGTH + 1 :]


def barrier_beside(key: str) -> str | None:
    """The barrier of the bucket ``key`` is in (``Keyspace.barrier`` of it): on a Redis
    Cluster, on the node that holds ``key``. None for a key without a bucket."""
    end = key.find("}")
    return None if end < 0 else key[: end + 1] + ":w"


def page_member(service_sid: str, page: int) -> str:
    """The member naming a page in its bucket's due pages (state.lua's ``context`` names it
    alike)."""
    return f"{service_sid}:{page}"


def split_page_member(member: str) -> tuple[str, int]:
    service_sid, _, page = member.rpartition(":")
    return service_sid, int(page)


def v1_due_member(service_sid: str, identity: str) -> str:
    """The member naming an identity in a format-1 due set (SIDs have a fixed length)."""
    return service_sid + identity
