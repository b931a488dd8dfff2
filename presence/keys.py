"""Every Redis key and channel name the service uses, in one place.

Layout (``p`` is ``PRESENCE_KEY_PREFIX``, ``b`` a bucket number, ``IS..`` a ServiceSid)::

    p:{b}:i:IS..:<identity>   hash    one identity's presence state
    p:{b}:on:IS..             zset    identities published online (score 0, ordered by name)
    p:{b}:n:IS..              hash    counters: online, pending, endpoints
    p:{b}:due                 zset    <ServiceSid><identity> -> next time (ms) it needs attention
    p:{b}:f:IS..              stream  the change feed: this bucket's changes of the service
    p:{b}:epoch               string  a random value that lives as long as the bucket's data
    p:act:IS..:<minute>       hash    webhook outcomes of the service in that minute
    p:{b}:tok:<token>         string  an I-Twilio-Idempotency-Token already recorded
    p:{b}:seen:<ListSid|MapSid> zset  EventIds of item events already recorded

The ``{b}`` hash tag puts an identity's state and every index it updates in one Redis Cluster
hash slot, so each Lua script touches a single slot. Identities are spread over buckets by a
hash of (ServiceSid, identity); a collection's keys are bucketed by its SID.
"""

from __future__ import annotations

import zlib

BUCKETS = 128
"""Number of hash-tag buckets. Part of the storage format: every replica must agree on it."""

SID_LENGTH = 34


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
        self._tags = [f"{prefix}:{{{b}}}" for b in range(BUCKETS)]

    @staticmethod
    def bucket_of(name: str) -> int:
        """The bucket of an identity key (name = ServiceSid + identity) or a collection SID."""
        return zlib.crc32(name.encode("utf-8")) % BUCKETS

    def identity(self, bucket: int, service_sid: str, identity: str) -> str:
        return f"{self._tags[bucket]}:i:{service_sid}:{identity}"

    def online(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:on:{service_sid}"

    def counters(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:n:{service_sid}"

    def due(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:due"

    def feed(self, bucket: int, service_sid: str) -> str:
        return f"{self._tags[bucket]}:f:{service_sid}"

    def epoch(self, bucket: int) -> str:
        return f"{self._tags[bucket]}:epoch"

    def token(self, bucket: int, token: str) -> str:
        return f"{self._tags[bucket]}:tok:{token}"

    def seen(self, bucket: int, collection_sid: str) -> str:
        return f"{self._tags[bucket]}:seen:{collection_sid}"

    def activity(self, service_sid: str, minute: int) -> str:
        """Webhook outcomes of one minute (by the epoch second it starts at): one key a
        minute, so the last hour is 60 reads and older minutes simply expire."""
        return f"{self.prefix}:act:{service_sid}:{minute}"

    def identity_channel(self, service_sid: str, identity: str) -> str:
        return f"{self.changes_channel}:{service_sid}:{identity}"


def due_member(service_sid: str, identity: str) -> str:
    """The member naming an identity in a bucket's ``due`` set (SIDs have a fixed length)."""
    return service_sid + identity


def split_due_member(member: str) -> tuple[str, str]:
    return member[:SID_LENGTH], member[SID_LENGTH:]
